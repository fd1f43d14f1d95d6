"""
The HTTP/2 server (keda_proxy.downstream._http2) on its own: the C{h2}
library plays the client, a StringTransport carries the bytes and a
MemoryReactorClock keeps time; the abuse a client may try is built frame
by frame with C{hyperframe}.  Last, real loopback sockets show one abusive
connection closed while another to the same listener is served.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.frame_buffer import CONTINUATION_BACKLOG
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides
from zope.interface.verify import verifyObject

from keda_proxy.downstream._body import BODY_GRACE, BODY_MIN_RATE
from keda_proxy.downstream._http1 import HTTP1ServerFactory
from keda_proxy.downstream._http2 import RESPONSE_HIGH_WATER, HTTP2ServerConnection
from keda_proxy.interfaces import IDownstreamExchange
from keda_proxy.upstream._http1client import parse_head
from tests.netsupport import wait_for
from tests.test_http1_server import Consumer


def request(method=b"GET", path=b"/", authority=b"example.com", extra=()):
    return [(b":method", method), (b":path", path), (b":scheme", b"http"),
            (b":authority", authority), *extra]


GET = request()
POST = request(b"POST")
TEXT = [(b"content-type", b"text/plain")]


def ok(exchange):
    exchange.answer(200, TEXT, b"ok\n")


def slow_upstream(consumer):
    """A handler whose upstream takes the body into C{consumer}, then holds
    it back at once."""

    def handle(exchange):
        exchange.body.attach(consumer)
        exchange.body.pauseProducing()

    return handle


def hold(exchange):
    """Leave the exchange open: the test answers it."""


class Server:
    """A factory whose handler records each exchange, on a fake clock."""

    def __init__(self, handler=hold, idle_timeout=60.0):
        self.clock = MemoryReactorClock()
        self.exchanges = []
        #: each exchange's end, in order; and by stream
        self.results = []
        self.outcome = {}

        def record(exchange):
            self.exchanges.append(exchange)

            def done(result, stream_id=exchange.stream_id):
                self.results.append(result)
                self.outcome[stream_id] = result

            exchange.notify_done(done)
            handler(exchange)

        self.factory = HTTP1ServerFactory(record, reactor=self.clock,
                                          idle_timeout=idle_timeout)

    def connect(self) -> "Client":
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555),
                                    hostAddress=IPv4Address("TCP", "10.0.0.1", 8080))
        proto.makeConnection(transport)
        client = Client(self.clock, proto, transport)
        client.flush()  # the prefaces and SETTINGS both ways
        return client


class Client:
    """An h2 client connection wired to one server connection."""

    def __init__(self, clock, proto, transport):
        self.clock = clock
        self.proto = proto
        self.transport = transport
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.events = []
        self.received = b""  # every byte the server wrote

    @property
    def connection(self) -> HTTP2ServerConnection:
        """The server's side: the HTTP/1.1 protocol hands its bytes to it."""
        return self.proto.dataReceived.__self__

    def take(self) -> bytes:
        """What the server wrote since last asked, its turn's writes done."""
        self.clock.advance(0)
        out = self.transport.value()
        self.transport.clear()
        self.received += out
        return out

    def flush(self) -> list:
        """Bytes both ways until neither side has more to say; the client's
        new events."""
        new = []
        while True:
            out = self.take()
            if out:
                new += self.h2.receive_data(out)
            data = self.h2.data_to_send()
            if data:
                self.proto.dataReceived(data)
            elif not out:
                break
        self.events += new
        return new

    def raw(self, *frames) -> list:
        """Frames the h2 client would not send, straight to the server; the
        frames that came back."""
        self.h2.data_to_send()  # nothing of the client's own in between
        self.proto.dataReceived(b"".join(f.serialize() for f in frames))
        return parse_frames(self.take())

    def send(self, headers, end_stream=True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting


def parse_frames(data: bytes) -> list:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def of(events, kind, stream_id=None) -> list:
    return [e for e in events if isinstance(e, kind)
            and (stream_id is None or e.stream_id == stream_id)]


def goaway(client) -> GoAwayFrame:
    client.take()
    [frame] = [f for f in parse_frames(client.received) if isinstance(f, GoAwayFrame)]
    return frame


def response(events, stream_id) -> tuple:
    """(headers, body, trailers, ended) of one stream's response."""
    [head] = of(events, ResponseReceived, stream_id)
    body = b"".join(e.data for e in of(events, DataReceived, stream_id))
    trailers = [e.headers for e in of(events, TrailersReceived, stream_id)]
    return dict(head.headers), body, trailers, bool(of(events, StreamEnded, stream_id))


class Producer:
    """An upstream producing a response body (IPushProducer)."""

    paused = False
    pauses = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


@pytest.fixture
def limits(monkeypatch):
    """Lower a connection's limits for one test: C{limits(name=value)}."""

    def lower(**values):
        for name, value in values.items():
            monkeypatch.setattr(HTTP2ServerConnection, name, value)

    return lower


# -- requests and responses ---------------------------------------------------


def test_a_get_is_one_exchange_and_its_answer_one_response():
    server = Server(ok)
    client = server.connect()
    stream_id = client.send(request(path=b"/a/b?c=d", extra=[(b"x-multi", b"1"),
                                                               (b"x-multi", b"2")]))
    [ex] = server.exchanges
    verifyObject(IDownstreamExchange, ex)
    assert (ex.method, ex.target, ex.path, ex.version) == (b"GET", b"/a/b?c=d", b"/a/b",
                                                           b"HTTP/2")
    assert ex.headers == {b"X-Multi": [b"1", b"2"], b"Host": [b"example.com"]}
    assert (ex.client_address, ex.client_port, ex.scheme) == ("10.1.2.3", 5555, b"http")
    headers, body, trailers, ended = response(client.events, stream_id)
    assert headers[b":status"] == b"200" and headers[b"content-length"] == b"3"
    assert (body, trailers, ended) == (b"ok\n", [], True)
    assert server.results == [None]
    assert client.connection.streams == {}


def test_h2_negotiated_by_alpn_is_served_as_https():
    server = Server(ok)
    proto = server.factory.buildProtocol(None)
    transport = StringTransport()
    alsoProvides(transport, ISSLTransport)
    transport.negotiatedProtocol = b"h2"
    proto.makeConnection(transport)
    client = Client(server.clock, proto, transport)
    stream_id = client.send(GET)
    assert server.exchanges[0].scheme == b"https"
    assert response(client.events, stream_id)[0][b":status"] == b"200"


def test_host_comes_from_the_authority_and_cookies_are_joined():
    """RFC 9113 §8.2.3: a client may split Cookie into crumbs; an HTTP/1.1
    upstream gets them as one field again."""
    server = Server()
    client = server.connect()
    client.send(request(authority=b"app.example:8080",
                        extra=[(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")]))
    [ex] = server.exchanges
    assert ex.headers[b"Host"] == [b"app.example:8080"]
    assert ex.headers[b"Cookie"] == [b"a=1; b=2"]


def test_a_post_body_streams_to_its_consumer_as_it_comes():
    consumer = Consumer()
    server = Server(lambda ex: ex.body.attach(consumer))
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    [ex] = server.exchanges
    assert ex.body.length is None and not ex.body.done
    client.h2.send_data(stream_id, b"hello ")
    client.flush()
    assert consumer.data == [b"hello "] and consumer.ended is None
    client.h2.send_data(stream_id, b"world")
    client.flush()
    assert consumer.data == [b"hello ", b"world"] and consumer.ended is None
    client.h2.send_headers(stream_id, [(b"x-sum", b"11")], end_stream=True)
    client.flush()
    assert consumer.ended == [(b"X-Sum", b"11")] and ex.body.done


# -- slow request bodies (the rule HTTP/1.1 bodies follow) -------------------------


def test_a_body_that_never_comes_is_answered_408_after_its_grace():
    server = Server()
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    server.clock.advance(BODY_GRACE - 1)
    assert server.results == []
    server.clock.advance(2)
    events = client.flush()
    headers, body, _, ended = response(events, stream_id)
    assert headers[b":status"] == b"408" and ended
    assert server.results == [None] and client.connection.streams == {}
    [reset] = of(events, StreamReset, stream_id)  # the rest of the body is not wanted
    assert reset.error_code == ErrorCodes.NO_ERROR


def test_a_body_at_the_minimum_rate_goes_on_past_its_grace():
    consumer = Consumer()
    server = Server(lambda ex: ex.body.attach(consumer))
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    for _ in range(int(BODY_GRACE) * 2):
        client.h2.send_data(stream_id, b"x" * int(BODY_MIN_RATE))
        client.flush()
        server.clock.advance(1)
    assert server.results == []
    client.h2.end_stream(stream_id)
    client.flush()
    assert consumer.ended == [] and server.exchanges[0].body.done


def test_a_body_the_proxy_holds_back_is_not_cut_and_its_grace_restarts_on_resume():
    consumer = Consumer()
    server = Server(slow_upstream(consumer))
    client = server.connect()
    client.send(POST, end_stream=False)
    server.clock.advance(BODY_GRACE * 3)
    assert server.results == []
    server.exchanges[0].body.resumeProducing()
    server.clock.advance(BODY_GRACE - 1)
    assert server.results == []
    server.clock.advance(2)
    client.flush()
    assert server.results == [None]  # answered 408


def test_a_grpc_stream_may_pause_as_long_as_it_likes():
    server = Server()
    client = server.connect()
    client.send(POST + [(b"content-type", b"application/grpc+proto")], end_stream=False)
    server.clock.advance(BODY_GRACE * 10)
    assert server.results == [] and len(client.connection.streams) == 1


def test_a_body_too_slow_once_the_response_began_resets_the_stream():
    server = Server()
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    [ex] = server.exchanges
    ex.respond(parse_head(b"HTTP/1.1 200 OK"))
    ex.write(b"early")
    server.clock.advance(BODY_GRACE + 1)
    events = client.flush()
    [reset] = of(events, StreamReset, stream_id)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    assert server.results[0].check(ConnectionAborted)


def test_a_response_in_parts_ends_with_its_trailers_on_a_headers_frame():
    server = Server()
    client = server.connect()
    stream_id = client.send(POST)
    [ex] = server.exchanges
    ex.respond(parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\n"
                          b"Date: Sun, 06 Nov 1994 08:49:37 GMT"))
    ex.write(b"abc")
    ex.write(b"def")
    ex.finish([(b"Grpc-Status", b"0"), (b"Content-Length", b"6")])
    client.flush()
    headers, body, trailers, ended = response(client.events, stream_id)
    assert headers == {b":status": b"200", b"content-type": b"application/grpc",
                       b"date": b"Sun, 06 Nov 1994 08:49:37 GMT"}
    assert body == b"abcdef"
    assert trailers == [[(b"grpc-status", b"0")]]  # not the fields that cannot be trailers
    [last] = parse_frames(client.received)[-1:]
    assert isinstance(last, HeadersFrame) and last.flags >= {"END_STREAM", "END_HEADERS"}
    assert ended and server.results == [None] and ex.sent_bytes == 6


def test_a_response_without_a_body_is_one_headers_frame():
    server = Server()
    client = server.connect()
    client.send(GET)
    [ex] = server.exchanges
    ex.respond(parse_head(b"HTTP/1.1 204 No Content"))
    ex.finish()
    client.flush()
    sent = [f for f in parse_frames(client.received) if f.stream_id == 1]
    assert [type(f) for f in sent] == [HeadersFrame] and "END_STREAM" in sent[0].flags


def test_a_paused_request_body_holds_its_stream_window_until_resumed(limits):
    limits(stream_window=65535)
    consumer = Consumer()
    server = Server(slow_upstream(consumer))
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    for _ in range(3):
        client.h2.send_data(stream_id, b"x" * 16000)
    events = client.flush()
    assert len(b"".join(consumer.data)) == 48000
    assert of(events, WindowUpdated, stream_id) == []
    assert client.h2.local_flow_control_window(stream_id) == 65535 - 48000
    server.exchanges[0].body.resumeProducing()
    events = client.flush()
    assert [e.delta for e in of(events, WindowUpdated, stream_id)] == [48000]
    assert client.h2.local_flow_control_window(stream_id) == 65535


def test_a_stream_over_while_its_body_is_paused_gives_its_bytes_back_to_the_connection(
        limits):
    """Bytes held back from a paused stream still count against the
    connection's window: once the stream is over they must be handed back,
    or a few such streams close the connection's window for good."""
    limits(stream_window=65535, connection_window=100000)

    def refuse_later(exchange):
        exchange.body.attach(Consumer())
        exchange.body.pauseProducing()

    server = Server(refuse_later)
    client = server.connect()
    for n in range(4):  # 4 x 48000 bytes: more than the connection's window
        stream_id = client.send(POST, end_stream=False)
        for _ in range(3):
            client.h2.send_data(stream_id, b"x" * 16000)
        client.flush()
        server.exchanges[n].answer(413, TEXT, b"too big\n")
        client.flush()
        assert response(client.events, stream_id)[0][b":status"] == b"413"
    assert client.h2.outbound_flow_control_window >= 100000 - 48000
    assert client.connection.streams == {}


def test_a_response_bigger_than_the_clients_window_waits_and_holds_its_producer():
    """The client's window is 64 KiB; the rest of the response waits here,
    and past RESPONSE_HIGH_WATER the upstream producing it is paused."""
    server = Server()
    client = server.connect()
    stream_id = client.send(GET)
    [ex] = server.exchanges
    producer = Producer()
    ex.respond(parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"))
    ex.registerProducer(producer, True)
    size = RESPONSE_HIGH_WATER + 100000
    ex.write(b"x" * size)

    def read():
        return sum(len(e.data) for e in of(client.flush(), DataReceived, stream_id))

    got = read()
    assert got == 65535 and producer.paused  # 65535 out, the rest over the mark
    assert not of(client.events, StreamEnded)
    client.h2.acknowledge_received_data(got, stream_id)
    new = read()
    assert new == 65535 and not producer.paused  # under the mark again
    got += new
    while new:
        client.h2.acknowledge_received_data(new, stream_id)
        new = read()
        got += new
    assert got == size and producer.pauses == 1 and not producer.paused
    ex.unregisterProducer()
    ex.finish()
    assert of(client.flush(), StreamEnded, stream_id)
    assert server.results == [None]


def test_a_client_that_stops_reading_pauses_every_streams_producer():
    """The connection is its transport's producer: a full socket buffer
    pauses each stream's upstream, and its draining resumes them."""
    server = Server()
    client = server.connect()
    producers = []
    for _ in range(2):
        client.send(GET)
        ex = server.exchanges[-1]
        ex.respond(parse_head(b"HTTP/1.1 200 OK"))
        producers.append(Producer())
        ex.registerProducer(producers[-1], True)
    assert client.transport.producer is client.connection
    client.connection.pauseProducing()  # as the transport does
    assert all(p.paused for p in producers)
    client.send(GET)  # a producer registered meanwhile starts paused
    late = Producer()
    server.exchanges[-1].registerProducer(late, True)
    assert late.paused
    client.connection.resumeProducing()
    assert not any(p.paused for p in producers + [late])


def test_the_client_resetting_a_stream_ends_its_exchange_with_a_failure():
    server = Server()
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    [ex] = server.exchanges
    client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()
    [result] = server.results
    assert result.check(ConnectionLost) and ex.finished
    assert client.connection.streams == {}
    before = len(client.received)
    ex.respond(parse_head(b"HTTP/1.1 200 OK"))
    ex.write(b"late")
    ex.finish()
    client.flush()
    assert len(client.received) == before  # nothing more on a reset stream


def test_abort_resets_the_stream():
    server = Server()
    client = server.connect()
    stream_id = client.send(GET)
    [ex] = server.exchanges
    ex.respond(parse_head(b"HTTP/1.1 200 OK"))
    ex.write(b"partial")
    ex.abort()
    events = client.flush()
    [reset] = of(events, StreamReset, stream_id)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    [result] = server.results
    assert result.check(ConnectionAborted)
    assert client.connection.streams == {} and not client.closing


def test_an_early_answer_resets_the_rest_of_the_request_and_frees_its_slot(limits):
    """A response complete before its request (an upload refused at once)
    resets the stream with NO_ERROR (RFC 9113 §8.1): the stream is closed
    for h2 as for us, so it does not count against the client's limit; and
    the body the client had in flight is no flood."""
    limits(max_concurrent_streams=2, control_burst=3)
    server = Server(lambda ex: ex.answer(401, TEXT, b"no\n"))
    client = server.connect()
    for _ in range(6):
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, POST)
        client.h2.send_data(stream_id, b"some of the body")
        events = client.flush()
        assert response(client.events, stream_id)[0][b":status"] == b"401"
        assert of(events, StreamReset, stream_id)[0].error_code == ErrorCodes.NO_ERROR
    assert len(server.exchanges) == 6 and server.results == [None] * 6
    assert client.connection.streams == {} and not client.closing


# -- refusals -------------------------------------------------------------------


@pytest.mark.parametrize("method,path,code", [
    (b"CONNECT", None, 405),
    (b"GET", b"example.com/x", 400),
    (b"GET", b"*", 400),
])
def test_connect_and_bad_paths_are_answered_and_never_handled(method, path, code):
    seen = []
    server = Server(seen.append)
    client = server.connect()
    headers = [(b":method", method), (b":authority", b"example.com:443")]
    if path is not None:
        headers += [(b":scheme", b"http"), (b":path", path)]
    stream_id = client.send(headers)
    assert response(client.events, stream_id)[0][b":status"] == b"%d" % code
    assert seen == [] and client.connection.streams == {}


def test_options_star_is_handed_on():
    server = Server(ok)
    client = server.connect()
    stream_id = client.send(request(b"OPTIONS", b"*"))
    assert server.exchanges[0].target == b"*"
    assert response(client.events, stream_id)[0][b":status"] == b"200"


def test_a_failing_handler_is_a_500_or_once_the_response_began_a_reset():
    def fail(exchange):
        if exchange.path == b"/late":
            exchange.respond(parse_head(b"HTTP/1.1 200 OK"))
            exchange.write(b"x")
        raise RuntimeError("bug")

    server = Server(fail)
    client = server.connect()
    first = client.send(GET)
    second = client.send(request(path=b"/late"))
    assert response(client.events, first)[0][b":status"] == b"500"
    [reset] = of(client.events, StreamReset, second)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    assert client.connection.streams == {} and not client.closing


# -- draining and idling ----------------------------------------------------------


def test_draining_sends_goaway_refuses_new_streams_and_closes_after_those_in_flight():
    server = Server()
    client = server.connect()
    stream_id = client.send(GET)
    server.factory.draining = True
    [terminated] = of(client.flush(), ConnectionTerminated)
    assert (terminated.error_code, terminated.last_stream_id) == (ErrorCodes.NO_ERROR, 1)
    assert not client.closing
    # a stream the client opened before it saw the GOAWAY is refused
    late = HeadersFrame(3, client.h2.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"])
    [refused] = client.raw(late)
    assert isinstance(refused, RstStreamFrame)
    assert (refused.stream_id, refused.error_code) == (3, ErrorCodes.REFUSED_STREAM)
    assert len(server.exchanges) == 1
    server.exchanges[0].answer(200, TEXT, b"last\n")
    sent = [f for f in parse_frames(client.take()) if f.stream_id == stream_id]
    assert "END_STREAM" in sent[-1].flags
    assert b"".join(f.data for f in sent if isinstance(f, DataFrame)) == b"last\n"
    assert client.closing and server.results == [None]


def test_a_response_finished_in_the_turn_draining_starts_goes_out_before_the_goaway():
    server = Server()
    client = server.connect()
    stream_id = client.send(GET)
    server.exchanges[0].answer(200, TEXT, b"ok\n")  # framed at the end of the turn
    server.factory.draining = True
    sent = parse_frames(client.take())
    assert [type(f) for f in sent] == [HeadersFrame, DataFrame, GoAwayFrame]
    assert sent[1].stream_id == stream_id and "END_STREAM" in sent[1].flags
    assert (sent[2].error_code, sent[2].last_stream_id) == (ErrorCodes.NO_ERROR, stream_id)
    assert client.closing and server.results == [None]


def test_streams_in_flight_while_draining_still_take_the_clients_frames():
    """After the GOAWAY a stream in flight still needs the client's DATA
    and WINDOW_UPDATEs (python-hyper/h2#1181: h2's own GOAWAY would make
    each a protocol error, cutting the stream).  The h2 client stops at
    the GOAWAY too, so its frames are made by hand here."""
    consumer = Consumer()
    server = Server(lambda ex: ex.body.attach(consumer))
    client = server.connect()
    stream_id = client.send(POST, end_stream=False)
    [ex] = server.exchanges
    server.factory.draining = True
    ex.respond(parse_head(b"HTTP/1.1 200 OK"))
    ex.write(b"x" * 100000)  # more than the client's window of 65535
    client.raw(DataFrame(stream_id, b"rest", flags=["END_STREAM"]),
               PingFrame(0, opaque_data=b"12345678"))
    assert consumer.data == [b"rest"] and consumer.ended == []
    client.raw(WindowUpdateFrame(0, window_increment=65535),
               WindowUpdateFrame(stream_id, window_increment=65535))
    ex.finish()
    sent = parse_frames(client.received + client.take())
    assert [(f.error_code, f.last_stream_id) for f in sent if isinstance(f, GoAwayFrame)] \
        == [(ErrorCodes.NO_ERROR, stream_id)]
    assert any(isinstance(f, PingFrame) and "ACK" in f.flags for f in sent)
    data = [f for f in sent if isinstance(f, DataFrame) and f.stream_id == stream_id]
    assert sum(len(f.data) for f in data) == 100000 and "END_STREAM" in data[-1].flags
    assert server.results == [None] and client.closing


def test_after_the_clients_goaway_its_streams_in_flight_finish():
    """RFC 9113 §6.8: a client's GOAWAY(NO_ERROR) says it opens no more
    streams; those it opened are still answered, then the connection
    closes."""
    server = Server()
    client = server.connect()
    stream_id = client.send(GET)
    [ex] = server.exchanges
    client.raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR))
    assert not client.closing
    [pong] = client.raw(PingFrame(0, opaque_data=b"12345678"))
    assert "ACK" in pong.flags
    [refused] = client.raw(HeadersFrame(3, client.h2.encoder.encode(GET),
                                        flags=["END_HEADERS", "END_STREAM"]))
    assert refused.error_code == ErrorCodes.REFUSED_STREAM and len(server.exchanges) == 1
    ex.answer(200, TEXT, b"ok\n")
    sent = [f for f in parse_frames(client.take()) if f.stream_id == stream_id]
    assert [type(f) for f in sent] == [HeadersFrame, DataFrame]
    assert sent[1].data == b"ok\n" and "END_STREAM" in sent[1].flags
    assert server.results == [None] and client.closing


def test_a_goaway_with_an_error_closes_at_once():
    server = Server()
    client = server.connect()
    client.send(GET)
    client.raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.INTERNAL_ERROR))
    [result] = server.results
    assert result.check(ConnectionLost) and client.closing
    assert client.connection.streams == {}


def test_a_draining_factory_closes_a_new_connection_once_it_has_said_goaway():
    server = Server()
    server.factory.draining = True
    client = server.connect()
    assert goaway(client).error_code == ErrorCodes.NO_ERROR and client.closing
    assert server.factory.h2_connections == {client.connection}
    client.proto.connectionLost(Failure(ConnectionDone()))
    assert server.factory.h2_connections == set()


def test_the_idle_timeout_closes_a_connection_without_streams():
    server = Server(idle_timeout=10.0)
    client = server.connect()
    stream_id = client.send(GET)
    server.clock.advance(30)
    assert not client.closing  # a stream in flight is not idle
    server.exchanges[0].answer(200, TEXT, b"ok\n")
    client.flush()
    server.clock.advance(9)
    assert not client.closing
    server.clock.advance(1)
    frame = goaway(client)
    assert (frame.error_code, frame.last_stream_id) == (ErrorCodes.NO_ERROR, stream_id)
    assert client.closing and not client.transport.disconnected
    server.clock.advance(HTTP2ServerConnection.close_grace)
    assert client.transport.disconnected  # a client that does not close is cut


def test_a_closed_connection_leaves_no_timer_behind():
    server = Server(idle_timeout=10.0)
    client = server.connect()
    client.send(GET)
    client.proto.connectionLost(Failure(ConnectionLost()))
    [result] = server.results
    assert result.check(ConnectionLost)
    assert server.clock.getDelayedCalls() == []
    assert server.factory.h2_connections == set()


# -- hardening --------------------------------------------------------------------


def calmed(client) -> bool:
    """The server said GOAWAY(ENHANCE_YOUR_CALM) and is closing."""
    client.take()
    frames = [f for f in parse_frames(client.received) if isinstance(f, GoAwayFrame)]
    if not frames:
        return False
    assert [f.error_code for f in frames] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert client.closing
    return True


def test_rapid_reset_is_met_with_enhance_your_calm(limits):
    """CVE-2023-44487: each stream opened and reset at once costs the
    server a request; past the budget the connection is closed, the
    streams in flight with it."""
    limits(reset_burst=20, reset_rate=10.0)
    server = Server()
    client = server.connect()
    held = client.send(GET)  # in flight when the flood starts
    resets = 0
    while not client.closing and resets < 1000:
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, GET, end_stream=True)
        client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.flush()
        resets += 1
    assert resets == 21 and calmed(client)
    assert goaway(client).last_stream_id == stream_id
    assert len(server.exchanges) == len(server.results) == 22
    assert server.outcome.pop(held).check(ConnectionAborted)  # cut with the connection
    assert server.outcome.pop(stream_id).check(ConnectionAborted)
    assert all(r.check(ConnectionLost) for r in server.outcome.values())
    assert client.connection.streams == {}
    server.clock.advance(HTTP2ServerConnection.close_grace)
    assert client.transport.disconnected


def test_resets_within_the_budgets_rate_go_on(limits):
    limits(reset_burst=20, reset_rate=10.0)
    server = Server()
    client = server.connect()
    for _ in range(100):
        stream_id = client.send(GET, end_stream=False)
        client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.flush()
        server.clock.advance(0.1)
    assert not client.closing and len(server.results) == 100


def test_streams_the_client_makes_the_server_reset_spend_the_reset_budget(limits):
    """'MadeYouReset' (CVE-2025-8671): a WINDOW_UPDATE that overflows a
    stream's window makes h2 reset the stream itself, after the handler took
    the request; such resets cost the same as the client's own."""
    limits(reset_burst=20, reset_rate=10.0)
    server = Server()
    client = server.connect()
    resets = 0
    while not client.closing and resets < 100:
        stream_id = client.send(GET)
        overflow = WindowUpdateFrame(stream_id, window_increment=2 ** 31 - 1)
        frames = client.raw(overflow)
        resets += 1
        if not client.closing:
            [reset] = frames
            assert isinstance(reset, RstStreamFrame)
            assert reset.error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert resets == 21 and calmed(client)
    assert client.connection.streams == {}


def _open_stream(client):
    return client.send(POST, end_stream=False)


def _reset_stream(client):
    stream_id = client.send(POST, end_stream=False)
    client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()
    return stream_id


#: frames that cost the server work and carry no request: (what the
#: stream they go on needs, the frame)
CONTROL_FLOODS = {
    "PING": (None, lambda _: PingFrame(0, opaque_data=b"12345678")),
    "SETTINGS": (None, lambda _: SettingsFrame(0)),
    "PRIORITY": (None, lambda _: PriorityFrame(101, depends_on=0, stream_weight=15)),
    "unknown type": (None, lambda _: ExtensionFrame(0xFA, 0, flag_byte=0, body=b"")),
    "empty DATA": (_open_stream, lambda stream_id: DataFrame(stream_id, b"")),
    # h2 answers these with RST_STREAM on its own, without telling
    "empty DATA on a reset stream": (_reset_stream,
                                     lambda stream_id: DataFrame(stream_id, b"")),
    "HEADERS on a reset stream": (_reset_stream, lambda stream_id: HeadersFrame(
        stream_id, b"", flags=["END_HEADERS", "END_STREAM"])),
}


@pytest.mark.parametrize("kind", list(CONTROL_FLOODS))
def test_a_flood_of_frames_without_requests_is_met_with_enhance_your_calm(kind, limits):
    limits(control_burst=50, control_rate=10.0)
    prepare, make = CONTROL_FLOODS[kind]
    server = Server()
    client = server.connect()
    stream_id = prepare(client) if prepare else 0
    sent = 0
    while not client.closing and sent < 1000:
        client.raw(make(stream_id))
        sent += 1
    assert sent <= 50 and calmed(client)
    assert client.connection.streams == {}
    if prepare is _open_stream:
        [result] = server.results
        assert result.check(ConnectionAborted)


@pytest.mark.parametrize("kind", list(CONTROL_FLOODS))
def test_frames_without_requests_at_the_budgets_rate_go_on(kind, limits):
    limits(control_burst=50, control_rate=10.0)
    prepare, make = CONTROL_FLOODS[kind]
    server = Server()
    client = server.connect()
    stream_id = prepare(client) if prepare else 0
    for _ in range(200):
        client.raw(make(stream_id))
        server.clock.advance(0.1)
    assert not client.closing


def test_a_continuation_flood_is_a_protocol_error():
    """A header block that never ends (CVE-2024-27316's CONTINUATION
    flood): h2 gives up after CONTINUATION_BACKLOG frames, without
    waiting for END_HEADERS, and the handler never runs."""
    server = Server()
    client = server.connect()
    block = client.h2.encoder.encode(GET)
    client.raw(HeadersFrame(1, block[:2], flags=["END_STREAM"]))
    continuations = 0
    while not client.closing and continuations < 1000:
        client.raw(ContinuationFrame(1, b"\x00" * 100))
        continuations += 1
    assert continuations == CONTINUATION_BACKLOG
    assert goaway(client).error_code == ErrorCodes.PROTOCOL_ERROR
    assert server.exchanges == []


def test_a_header_list_over_the_limit_closes_the_connection(limits):
    limits(max_header_list_size=8192)
    server = Server(ok)
    client = server.connect()
    within = client.send(request(extra=[(b"x-big", b"a" * 4000)]))
    assert response(client.events, within)[0][b":status"] == b"200"
    block = client.h2.encoder.encode(request(extra=[(b"x-big", b"a" * 9000)]))
    client.raw(HeadersFrame(3, block[:100], flags=["END_STREAM"]),
               ContinuationFrame(3, block[100:], flags=["END_HEADERS"]))
    assert goaway(client).error_code == DenialOfServiceError.error_code \
        == ErrorCodes.ENHANCE_YOUR_CALM
    assert client.closing and len(server.exchanges) == 1


def test_more_streams_than_allowed_close_the_connection(limits):
    """h2 treats a stream past SETTINGS_MAX_CONCURRENT_STREAMS as a
    connection error (RFC 9113 §5.4.1 allows it in place of a stream
    error): GOAWAY(PROTOCOL_ERROR), the streams in flight ended, and the
    extra stream never handled."""
    limits(max_concurrent_streams=3)
    server = Server()
    client = server.connect()
    assert client.h2.remote_settings.max_concurrent_streams == 3
    for _ in range(3):
        client.send(GET)
    assert len(server.exchanges) == 3
    extra = HeadersFrame(7, client.h2.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"])
    client.raw(extra)
    frame = goaway(client)
    assert (frame.error_code, frame.last_stream_id) == (ErrorCodes.PROTOCOL_ERROR, 5)
    assert client.closing and len(server.exchanges) == 3
    assert [r.check(ConnectionDone) for r in server.results] == [ConnectionDone] * 3
    assert client.connection.streams == {}


def test_a_connection_window_at_the_protocols_initial_size_needs_no_update(limits):
    limits(connection_window=65535)
    server = Server(ok)
    client = server.connect()
    stream_id = client.send(GET)
    assert response(client.events, stream_id)[0][b":status"] == b"200"


# -- over real sockets ----------------------------------------------------------------


class H2Client(Protocol):
    """An h2 client over a real socket."""

    def __init__(self):
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events = []
        self.error = None
        self.lost = Deferred()

    def connectionMade(self):
        self.h2.initiate_connection()
        self.flush()

    def dataReceived(self, data):
        try:
            self.events += self.h2.receive_data(data)
        except ProtocolError as e:
            self.error = e
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def connectionLost(self, reason):
        self.lost.callback(None)

    def get(self) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, GET, end_stream=True)
        self.flush()
        return stream_id

    def answered(self, stream_id) -> bool:
        return bool(of(self.events, StreamEnded, stream_id))

    def status(self, stream_id) -> bytes:
        return response(self.events, stream_id)[0][b":status"]


@pytest_twisted.inlineCallbacks
def test_an_abusive_connection_is_closed_and_another_to_the_same_listener_served(limits):
    limits(reset_burst=50)
    factory = HTTP1ServerFactory(ok, reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    try:
        good = yield connectProtocol(endpoint, H2Client())
        bad = yield connectProtocol(endpoint, H2Client())
        first = good.get()
        yield wait_for(lambda: good.answered(first), timeout=10, what="the first answer")
        for _ in range(200):  # far past the budget, in one burst
            stream_id = bad.h2.get_next_available_stream_id()
            bad.h2.send_headers(stream_id, GET, end_stream=True)
            bad.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        bad.flush()
        yield wait_for(lambda: bad.lost.called and len(factory.h2_connections) == 1,
                       timeout=10, what="the abuser cut")
        [terminated] = of(bad.events, ConnectionTerminated)
        assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        second = good.get()
        yield wait_for(lambda: good.answered(second), timeout=10, what="the second answer")
        assert (good.status(first), good.status(second)) == (b"200", b"200")
        assert not good.lost.called and not of(good.events, ConnectionTerminated)
        good.transport.loseConnection()
        yield good.lost
    finally:
        yield port.stopListening()


# -- memory: nothing for the collector ------------------------------------------


def test_streams_and_a_closed_connection_leave_nothing_for_the_collector():
    """Reference counting alone frees what a stream and a closed HTTP/2
    connection held: the interceptor runs full collections rarely, so a
    cycle per connection (h2's own, or the body's callbacks) would stay in
    memory with everything it reached."""
    import gc

    from keda_proxy.wire._h2state import release
    from tests.builders import endpoint_slice, load, route, service
    from tests.proxyfakes import OK_5, Harness

    h = Harness()
    load(h.store, routes=[route(hosts=["example.com"])], services=[service()],
         slices=[endpoint_slice()])

    def exchange(client, headers, body=None):
        stream_id = client.send(headers, end_stream=body is None)
        if body is not None:
            client.h2.send_data(stream_id, body, end_stream=True)
            client.flush()
        up = h.upstream() if len(h.dials) > len(ups) else ups[-1]
        if up not in ups:
            ups.append(up)
        up.transport.clear()
        up.respond(OK_5)
        events = client.flush()
        assert of(events, StreamEnded, stream_id)

    ups = []
    proto, transport = h.connect()
    client = Client(h.clock, proto, transport)
    client.flush()
    exchange(client, GET)  # the pool, caches and memo tables exist now
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            exchange(client, GET)
            exchange(client, POST + [(b"content-length", b"3")], b"abc")
        assert gc.collect() == 0
        proto.connectionLost(Failure(ConnectionDone()))
        release(client.h2)  # the test's own client, an h2 connection too
        h.exchange = None  # the harness keeps the last one
        del proto, transport, client
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_what_h2_remembers_of_closed_streams_is_bounded():
    """A long-lived connection (a gRPC channel) serves stream after stream:
    h2 remembers how each closed (about 74 bytes each), up to a bound the
    server lowers from h2's 65,536 to 4,096."""
    server = Server(ok)
    client = server.connect()
    for _ in range(5000):
        client.send(GET)
    h2conn = client.connection._h2
    assert 4000 <= len(h2conn._closed_streams) <= 4096
    assert len(h2conn.streams) < 10
