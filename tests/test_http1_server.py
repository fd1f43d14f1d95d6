"""
The HTTP/1.1 server protocol on its own (keda_proxy.downstream), bytes in
and bytes out: a handler that records each exchange stands in for the
request path, a StringTransport for the client, a MemoryReactorClock for
time.
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides
from zope.interface.verify import verifyObject

import keda_proxy.downstream._http1 as http1
from keda_proxy.downstream import HTTP1ServerFactory
from keda_proxy.downstream._body import BODY_HIGH_WATER
from keda_proxy.downstream._head import MAX_HEAD_SIZE, HeadError, parse_head
from keda_proxy.downstream._http1 import BODY_GRACE, HEAD_TIMEOUT, IDLE_TIMEOUT
from keda_proxy.interfaces import IDownstreamExchange, IRequestBody
from keda_proxy.upstream._http1client import parse_head as parse_response_head

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"


def head(raw: bytes):
    """An upstream response head, as the request path passes it on."""
    return parse_response_head(raw)


OK = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5")
UNKNOWN_LENGTH = head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")


class Transport(StringTransport):
    """A StringTransport that also keeps each write apart."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


class Server:
    """A factory whose handler records the exchanges, on a fake clock."""

    def __init__(self, handler=None, **kw):
        self.clock = MemoryReactorClock()
        self.exchanges = []

        def record(exchange):
            self.exchanges.append(exchange)
            if handler is not None:
                handler(exchange)

        self.factory = HTTP1ServerFactory(record, reactor=self.clock, **kw)

    def connect(self):
        proto = self.factory.buildProtocol(None)
        t = Transport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555),
                      hostAddress=IPv4Address("TCP", "10.0.0.1", 8080))
        proto.makeConnection(t)
        return proto, t

    def send(self, raw: bytes, trickle: bool = False):
        proto, t = self.connect()
        for piece in ([raw[i:i + 1] for i in range(len(raw))] if trickle else [raw]):
            proto.dataReceived(piece)
        return proto, t


def ok(exchange, body=b"hello"):
    exchange.respond(OK if len(body) == 5 else head(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d" % len(body)))
    exchange.write(body)
    exchange.finish()


def answer_at_once(exchange):
    exchange.answer(404, [(b"Content-Type", b"text/plain; charset=utf-8")], b"Not Found\n")


def status_lines(t) -> list:
    return re.findall(rb"HTTP/1\.[01] \d\d\d [^\r]*", t.value())


def fields(raw: bytes) -> dict:
    out: dict = {}
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def tick(clock, seconds: float, step: float = 0.5):
    """Let time pass in small steps, as it does, so that each timer runs
    when it is due."""
    for _ in range(int(seconds / step)):
        clock.advance(step)


class Consumer:
    """An upstream's side of a request body (IBodyConsumer)."""

    def __init__(self):
        self.data = []
        self.ended = None

    def write_body(self, data):
        self.data.append(data)

    def end_body(self, trailers=None):
        self.ended = trailers or []


# -- requests -----------------------------------------------------------------


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_a_head_is_parsed_the_same_whole_or_a_byte_at_a_time(trickle):
    s = Server()
    raw = (b"POST /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nX-Multi: 1\r\nx-multi:  2 \t\r\n"
           b"Content-Length: 3\r\n\r\nabc")
    _, t = s.send(raw, trickle)
    [ex] = s.exchanges
    verifyObject(IDownstreamExchange, ex)
    verifyObject(IRequestBody, ex.body)
    assert (ex.method, ex.target, ex.path, ex.version) == (b"POST", b"/a/b?c=d", b"/a/b",
                                                           b"HTTP/1.1")
    assert ex.headers == {b"Host": [b"example.com"], b"X-Multi": [b"1", b"2"],
                          b"Content-Length": [b"3"]}
    assert (ex.client_address, ex.client_port, ex.scheme) == ("10.1.2.3", 5555, b"http")
    consumer = Consumer()
    ex.body.attach(consumer)
    assert b"".join(consumer.data) == b"abc" and consumer.ended == []
    assert t.value() == b""


def test_the_handler_runs_when_the_head_is_in_and_the_body_follows():
    s = Server()
    proto, _ = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhel")
    [ex] = s.exchanges
    assert ex.body.length == 11 and not ex.body.done
    consumer = Consumer()
    ex.body.attach(consumer)
    proto.dataReceived(b"lo world")
    assert consumer.data == [b"hel", b"lo world"] and consumer.ended == []
    assert ex.body.done


def test_a_chunked_body_is_decoded_and_its_trailers_passed_on():
    s = Server()
    proto, _ = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    [ex] = s.exchanges
    assert ex.body.length is None
    consumer = Consumer()
    ex.body.attach(consumer)
    proto.dataReceived(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n")
    assert consumer.data == [b"hello"] and consumer.ended == [(b"X-Sum", b"1")]


@pytest.mark.parametrize("line", [b"no colon", b"X(Y): 2", b"X-Nul: a\x00b"])
def test_a_malformed_request_trailer_refuses_the_request(line):
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    [ex] = s.exchanges
    consumer = Consumer()
    ex.body.attach(consumer)
    proto.dataReceived(b"5\r\nhello\r\n0\r\n%s\r\n\r\n" % line)
    assert consumer.ended is None
    assert status_lines(t) == [b"HTTP/1.1 400 Bad Request"]


def test_request_trailers_that_must_not_be_trailers_are_dropped():
    s = Server()
    proto, _ = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    [ex] = s.exchanges
    consumer = Consumer()
    ex.body.attach(consumer)
    proto.dataReceived(b"0\r\nContent-Length: 99\r\nx-sum: 1\r\n\r\n")
    assert consumer.ended == [(b"X-Sum", b"1")]


def test_a_tls_client_is_https():
    s = Server()
    proto = s.factory.buildProtocol(None)
    t = StringTransport()
    alsoProvides(t, ISSLTransport)
    proto.makeConnection(t)
    proto.dataReceived(GET)
    assert s.exchanges[0].scheme == b"https"


def test_one_empty_line_ahead_of_a_request_is_tolerated_two_are_not():
    s = Server(answer_at_once)
    _, t = s.send(b"\r\n" + GET)
    assert status_lines(t) == [b"HTTP/1.1 404 Not Found"]
    _, t = s.send(b"\r\n\r\n" + GET)
    assert status_lines(t) == [b"HTTP/1.1 400 Bad Request"]


# -- refusals -------------------------------------------------------------------

BAD_REQUESTS = [
    b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",                      # request line
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",                            # version
    b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",                          # target form
    b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",                            # * only for OPTIONS
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",             # control character
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",               # bare CR
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",        # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",             # not a token
    b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost\r\n\r\n",                               # a known name, no colon
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(501)) + b"\r\n",
]


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("raw", BAD_REQUESTS)
def test_ambiguous_heads_are_refused_with_gos_400_and_never_handled(raw, trickle):
    s = Server()
    _, t = s.send(raw, trickle)
    assert t.value() == (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8"
                         b"\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n")
    assert t.disconnecting
    assert s.exchanges == []


def test_connect_and_options_star_are_handed_on():
    s = Server()
    s.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    s.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    s.send(b"GET http://example.com/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [ex.target for ex in s.exchanges] == [b"example.com:443", b"*",
                                                 b"http://example.com/x"]


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_a_request_line_over_the_head_limit_is_414(trickle):
    s = Server()
    _, t = s.send(b"GET /" + b"a" * MAX_HEAD_SIZE + b" HTTP/1.1\r\nHost: a\r\n\r\n", trickle)
    assert status_lines(t) == [b"HTTP/1.1 414 Request URI Too Long"]
    assert t.disconnecting and s.exchanges == []


def test_a_long_request_line_is_refused_before_it_ends():
    s = Server()
    proto, t = s.connect()
    proto.dataReceived(b"GET /" + b"a" * MAX_HEAD_SIZE)
    assert status_lines(t) == [b"HTTP/1.1 414 Request URI Too Long"]


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_headers_over_the_head_limit_are_431(trickle):
    s = Server()
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(66))
    _, t = s.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", trickle)
    assert status_lines(t) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert t.disconnecting and s.exchanges == []


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_a_head_just_within_the_limit_is_served_and_one_byte_more_is_not(trickle):
    line = b"GET / HTTP/1.1"
    filler = MAX_HEAD_SIZE - len(line) - len(b"X-Fill: ")
    s = Server()
    s.send(line + b"\r\nX-Fill: " + b"f" * filler + b"\r\n\r\n", trickle)
    assert len(s.exchanges) == 1
    s = Server()
    _, t = s.send(line + b"\r\nX-Fill: " + b"f" * (filler + 1) + b"\r\n\r\n", trickle)
    assert status_lines(t) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_slow_head_is_408_when_its_next_bytes_come_past_the_deadline():
    s = Server()
    proto, t = s.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    s.clock.advance(HEAD_TIMEOUT - 1)
    proto.dataReceived(b"Host: a\r\n")
    assert t.value() == b""
    s.clock.advance(1)
    proto.dataReceived(b"X-A: 1\r\n")
    assert status_lines(t) == [b"HTTP/1.1 408 Request Timeout"]
    assert t.disconnecting and s.exchanges == []


def test_a_keep_alive_heads_deadline_starts_with_its_first_byte():
    s = Server(ok)
    proto, t = s.connect()
    proto.dataReceived(GET)
    s.clock.advance(HEAD_TIMEOUT + 10)  # idle between requests is not a slow head
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    s.clock.advance(HEAD_TIMEOUT - 1)
    proto.dataReceived(b"Host: a\r\n\r\n")
    assert status_lines(t) == [b"HTTP/1.1 200 OK"] * 2


def test_a_trickled_body_is_408_before_its_response_and_a_cut_after():
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
    done = []
    s.exchanges[0].notify_done(done.append)
    s.clock.advance(BODY_GRACE + 1)
    assert status_lines(t) == [b"HTTP/1.1 408 Request Timeout"] and t.disconnecting
    assert len(done) == 1 and isinstance(done[0], Failure)

    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
    ex = s.exchanges[1]
    ex.respond(OK)
    ex.write(b"he")
    s.clock.advance(BODY_GRACE + 1)
    assert b"408" not in t.value() and t.disconnected  # aborted
    assert ex.finished


def test_a_bad_chunk_is_400_before_the_response_and_a_cut_after():
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.dataReceived(b"zz\r\n")
    assert status_lines(t) == [b"HTTP/1.1 400 Bad Request"] and t.disconnecting
    assert s.exchanges[0].finished

    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    ex = s.exchanges[1]
    ex.respond(UNKNOWN_LENGTH)
    ex.write(b"he")
    proto.dataReceived(b"5\r\nhelloX")
    assert b"400" not in t.value() and t.disconnected


# -- responses ------------------------------------------------------------------


def test_the_head_goes_out_with_the_first_body_bytes_in_one_write():
    s = Server()
    _, t = s.send(GET)
    ex = s.exchanges[0]
    ex.response_headers[b"X-KEDA-HTTP-Cold-Start"] = [b"false"]
    ex.respond(head(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Up: 1"))
    assert t.writes == []
    ex.write(b"hello")
    ex.finish()
    [first] = t.writes
    assert first.startswith(b"HTTP/1.1 201 Created\r\nX-Up: 1\r\nContent-Length: 5\r\nDate: ")
    assert first.endswith(b"\r\nX-KEDA-HTTP-Cold-Start: false\r\n\r\nhello")
    assert (ex.code, ex.sent_bytes, ex.finished) == (201, 5, True)
    assert not t.disconnecting


def test_a_whole_response_is_one_write_and_the_next_pipelined_request_follows():
    s = Server()
    _, t = s.send(get(b"/1") + get(b"/2"))
    ex = s.exchanges[0]
    ex.response_headers[b"X-KEDA-HTTP-Cold-Start"] = [b"true"]
    ex.respond_whole(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1"), b"hello")
    [first] = t.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\nX-Up: 1\r\nContent-Length: 5\r\nDate: ")
    assert first.endswith(b"\r\nX-KEDA-HTTP-Cold-Start: true\r\n\r\nhello")
    assert (ex.code, ex.sent_bytes, ex.finished) == (200, 5, True)
    assert [e.path for e in s.exchanges] == [b"/1", b"/2"] and not t.disconnecting


def test_a_whole_response_to_head_or_a_gone_client_sends_no_body():
    s = Server()
    _, t = s.send(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    s.exchanges[0].respond_whole(OK, b"hello")
    assert t.value().endswith(b"\r\n\r\n") and s.exchanges[0].sent_bytes == 0
    proto, t = s.send(GET)
    proto.connectionLost(Failure(ConnectionLost()))
    s.exchanges[1].respond_whole(OK, b"hello")
    assert t.value() == b""


def test_an_unknown_length_is_chunked_on_http11_and_ends_with_the_connection_on_10():
    s = Server()
    _, t = s.send(GET)
    ex = s.exchanges[0]
    ex.respond(UNKNOWN_LENGTH)
    ex.write(b"hello")
    ex.finish([(b"X-Sum", b"5")])
    assert fields(t.value())[b"transfer-encoding"] == [b"chunked"]
    assert t.value().endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n")
    assert not t.disconnecting

    _, t = s.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    ex = s.exchanges[1]
    ex.respond(UNKNOWN_LENGTH)
    ex.write(b"hello")
    ex.finish([(b"X-Sum", b"5")])
    assert t.value().startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"chunked" not in t.value() and b"connection" not in fields(t.value())
    assert t.value().endswith(b"\r\n\r\nhello") and t.disconnecting


@pytest.mark.parametrize("method, response", [
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5"),
    (b"GET", b"HTTP/1.1 204 No Content"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x"),
])
def test_head_204_and_304_responses_have_no_body(method, response):
    s = Server()
    proto, t = s.send(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    ex = s.exchanges[0]
    ex.respond(head(response))
    ex.write(b"hello")
    ex.finish()
    assert t.value().endswith(b"\r\n\r\n") and b"chunked" not in t.value()
    proto.dataReceived(GET)  # and the connection goes on
    assert len(s.exchanges) == 2


def test_the_upstreams_date_is_kept_and_ours_made_once_a_second(monkeypatch):
    made = []
    monkeypatch.setattr(http1, "datetimeToString", lambda s: made.append(s) or b"D%d" % s)
    s = Server(ok)
    s.clock.advance(1000)
    proto, t = s.connect()
    for _ in range(3):
        proto.dataReceived(GET)
    s.clock.advance(1.5)
    proto.dataReceived(GET)
    assert made == [1000, 1001]
    assert fields(t.value())[b"date"] == [b"D1000"]
    assert t.value().count(b"Date: D1000\r\n") == 3 and t.value().count(b"Date: D1001") == 1
    s = Server()
    _, t = s.send(GET)
    s.exchanges[0].respond(head(b"HTTP/1.1 200 OK\r\nDate: upstream\r\nContent-Length: 0"))
    s.exchanges[0].finish()
    assert fields(t.value())[b"date"] == [b"upstream"]


def test_an_answer_is_whole_with_its_length():
    s = Server(answer_at_once)
    _, t = s.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n" + GET)
    first, second = t.value().split(b"HTTP/1.1 404", 2)[1:]
    assert b"Content-Length: 10\r\n" in first and first.endswith(b"\r\n\r\n")
    assert second.endswith(b"\r\n\r\nNot Found\n")
    assert [ex.sent_bytes for ex in s.exchanges] == [0, 10]


def test_an_answer_after_the_response_began_is_a_cut():
    s = Server()
    _, t = s.send(GET)
    ex = s.exchanges[0]
    done = []
    ex.notify_done(done.append)
    ex.respond(UNKNOWN_LENGTH)
    ex.write(b"he")
    ex.answer(502, [], b"Bad Gateway\n")
    assert b"502" not in t.value() and t.disconnected
    assert isinstance(done[0], Failure)


def test_early_hints_go_to_http11_clients_only_and_before_the_response():
    s = Server()
    _, t11 = s.send(GET)
    _, t10 = s.send(b"GET / HTTP/1.0\r\n\r\n")
    hints = head(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>")
    for ex in s.exchanges:
        ex.informational(hints)
        ok(ex)
        ex.informational(hints)
    assert status_lines(t11) == [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    assert status_lines(t10) == [b"HTTP/1.0 200 OK"]


def test_a_failing_handler_is_a_500():
    def boom(exchange):
        raise RuntimeError("bug")

    s = Server(boom)
    _, t = s.send(GET)
    assert status_lines(t) == [b"HTTP/1.1 500 Internal Server Error"]


# -- keep-alive and pipelining ----------------------------------------------------


def test_three_pipelined_requests_in_one_read_are_answered_one_at_a_time_in_order():
    s = Server()
    proto, t = s.send(get(b"/1") + get(b"/2") + get(b"/3"))
    assert [ex.path for ex in s.exchanges] == [b"/1"]  # the next waits for this answer
    assert t.producerState == "paused"  # and the client is not read meanwhile
    ok(s.exchanges[0], b"one")
    assert [ex.path for ex in s.exchanges] == [b"/1", b"/2"]
    assert t.producerState == "paused"
    ok(s.exchanges[1], b"two")
    assert t.producerState == "producing"  # nothing waits any more
    ok(s.exchanges[2], b"three")
    out = t.value()
    assert out.index(b"one") < out.index(b"two") < out.index(b"three")
    assert status_lines(t) == [b"HTTP/1.1 200 OK"] * 3 and not t.disconnecting


def test_pipelined_requests_answered_at_once_are_all_answered_in_one_read():
    s = Server(answer_at_once)
    _, t = s.send(get(b"/1") + get(b"/2") + get(b"/3"))
    assert len(s.exchanges) == 3 and status_lines(t) == [b"HTTP/1.1 404 Not Found"] * 3
    assert t.producerState == "producing"


def test_a_request_after_a_body_waits_for_the_bodys_response():
    s = Server()
    proto, t = s.send(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi" + get(b"/2"))
    assert len(s.exchanges) == 1 and t.producerState == "paused"
    s.exchanges[0].body.attach(Consumer())
    ok(s.exchanges[0])
    assert [ex.path for ex in s.exchanges] == [b"/1", b"/2"]


@pytest.mark.parametrize("connection", [b"close", b"keep-alive, close", b"CLOSE",
                                        b"keep-alive,close"])
def test_close_in_any_connection_token_closes_after_the_response(connection):
    s = Server(ok)
    _, t = s.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + connection + b"\r\n\r\n" + GET)
    assert fields(t.value())[b"connection"] == [b"close"]
    assert t.disconnecting and len(s.exchanges) == 1


def test_http10_keep_alive_is_kept_when_the_length_is_known():
    s = Server(ok)
    proto, t = s.send(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.0 200 OK\r\n")
    assert fields(t.value())[b"connection"] == [b"keep-alive"] and not t.disconnecting
    t.clear()
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")  # without it: closed, and not said
    assert b"connection" not in fields(t.value()) and t.disconnecting
    assert len(s.exchanges) == 2


def test_a_response_done_before_its_request_body_closes_the_connection():
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel")
    ok(s.exchanges[0])
    assert t.disconnecting
    proto.dataReceived(b"lo worldGET / HTTP/1.1\r\n\r\n")  # the rest is never read as a request
    assert len(s.exchanges) == 1


def test_while_draining_each_response_closes_its_connection():
    s = Server()
    _, t = s.send(GET)
    s.factory.draining = True
    ok(s.exchanges[0])
    assert fields(t.value())[b"connection"] == [b"close"] and t.disconnecting
    s.factory.draining = False
    _, t = s.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    s.factory.draining = True
    answer_at_once(s.exchanges[1])
    assert fields(t.value())[b"connection"] == [b"close"] and t.disconnecting


# -- 100 Continue ---------------------------------------------------------------

EXPECTING = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"


def test_continue_goes_out_once_the_request_is_handled_and_not_answered():
    s = Server()
    _, t = s.send(EXPECTING)
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_no_continue_for_a_request_answered_at_once():
    s = Server(answer_at_once)
    _, t = s.send(EXPECTING)
    assert status_lines(t) == [b"HTTP/1.1 404 Not Found"]
    assert t.disconnecting  # the body it held back is unread


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
])
def test_no_continue_for_http10_or_without_a_body(raw):
    s = Server()
    _, t = s.send(raw)
    assert t.value() == b"" and len(s.exchanges) == 1


# -- flow control ---------------------------------------------------------------


def test_a_body_nobody_takes_yet_pauses_the_client_past_the_high_water_mark():
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                      % (4 * BODY_HIGH_WATER))
    piece = b"x" * (BODY_HIGH_WATER // 2)
    proto.dataReceived(piece)
    proto.dataReceived(piece)
    assert t.producerState == "producing"
    proto.dataReceived(b"y")
    assert t.producerState == "paused"
    consumer = Consumer()
    s.exchanges[0].body.attach(consumer)
    assert t.producerState == "producing"
    assert sum(map(len, consumer.data)) == BODY_HIGH_WATER + 1


def test_the_consumer_pausing_the_body_pauses_the_client_and_resumes_it():
    s = Server()
    proto, t = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    body = s.exchanges[0].body
    body.attach(Consumer())
    body.pauseProducing()  # the upstream's send buffer is full
    assert t.producerState == "paused"
    s.clock.advance(IDLE_TIMEOUT * 3)  # held back by the proxy: no idle close, no 408
    assert not t.disconnecting
    body.resumeProducing()
    assert t.producerState == "producing"
    s.clock.advance(BODY_GRACE - 1)  # its grace starts again from the resume
    assert not t.disconnecting
    s.clock.advance(2)
    assert status_lines(t) == [b"HTTP/1.1 408 Request Timeout"]


def test_a_slow_client_pauses_the_responses_producer():
    class Producer:
        state = "producing"

        def pauseProducing(self):
            self.state = "paused"

        def resumeProducing(self):
            self.state = "producing"

        def stopProducing(self):
            self.state = "stopped"

    s = Server()
    proto, t = s.send(GET)
    assert t.producer is proto and t.streaming  # the protocol hears of the client's pace
    ex = s.exchanges[0]
    ex.respond(UNKNOWN_LENGTH)
    producer = Producer()
    ex.registerProducer(producer, True)
    proto.pauseProducing()  # the transport's buffer is full
    assert producer.state == "paused"
    proto.resumeProducing()
    assert producer.state == "producing"
    proto.pauseProducing()
    ex.unregisterProducer()
    late = Producer()
    s.exchanges[0].registerProducer(late, True)  # registered while the client is slow
    assert late.state == "paused"


# -- the end of an exchange -------------------------------------------------------


def test_a_client_leaving_mid_request_is_told_once_with_a_failure():
    s = Server()
    proto, _ = s.send(GET)
    done = []
    s.exchanges[0].notify_done(done.append)
    proto.connectionLost(Failure(ConnectionLost()))
    proto.connectionLost(Failure(ConnectionLost()))
    assert len(done) == 1 and done[0].check(ConnectionLost)
    assert s.exchanges[0].finished
    s.exchanges[0].write(b"late")  # nothing more may be sent, and nothing breaks


def test_an_exchange_answered_is_told_once_with_none_even_if_the_client_leaves_after():
    s = Server()
    proto, _ = s.send(GET)
    done = []
    ex = s.exchanges[0]
    ex.notify_done(done.append)
    ok(ex)
    proto.connectionLost(Failure(ConnectionDone()))
    assert done == [None]
    late = []
    ex.notify_done(late.append)  # registered after the end: told at once
    assert late == [None]


def test_abort_cuts_the_connection_and_ends_the_exchange():
    s = Server()
    proto, t = s.send(GET)
    done = []
    ex = s.exchanges[0]
    ex.notify_done(done.append)
    ex.respond(UNKNOWN_LENGTH)
    ex.write(b"partial")
    ex.abort()
    assert t.disconnected and ex.finished and isinstance(done[0], Failure)


# -- idle connections ---------------------------------------------------------------


def test_a_silent_client_meets_the_idle_timeout_then_an_abort():
    s = Server()
    proto, t = s.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    s.clock.advance(IDLE_TIMEOUT - 0.5)
    assert not t.disconnecting
    s.clock.advance(0.5)
    assert t.disconnecting and t.value() == b""  # no 408: it is not reading anyway
    assert not t.disconnected
    s.clock.advance(http1.ABORT_TIMEOUT)
    assert t.disconnected


def test_idle_time_counts_from_the_last_bytes_or_the_last_response():
    s = Server()
    proto, t = s.connect()
    s.clock.advance(20)
    proto.dataReceived(GET)
    tick(s.clock, IDLE_TIMEOUT * 2)  # answering it: not idle
    assert not t.disconnecting
    ok(s.exchanges[0])
    tick(s.clock, IDLE_TIMEOUT - 1)
    assert not t.disconnecting
    tick(s.clock, 1)
    assert t.disconnecting


def test_a_custom_idle_timeout_and_none():
    s = Server(idle_timeout=5)
    _, t = s.connect()
    s.clock.advance(5)
    assert t.disconnecting
    s = Server(idle_timeout=0)
    _, t = s.connect()
    s.clock.advance(10 * IDLE_TIMEOUT)
    assert not t.disconnecting and s.clock.getDelayedCalls() == []


def test_no_timer_is_left_behind_by_a_closed_connection():
    s = Server()
    proto, _ = s.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert s.clock.getDelayedCalls() == []


# -- upgrades -------------------------------------------------------------------------


def test_take_over_hands_the_transport_and_the_bytes_past_the_request():
    s = Server()
    proto, t = s.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                      b"Upgrade: websocket\r\n\r\nearly frame")
    proto.dataReceived(b" and more")
    ex = s.exchanges[0]
    done = []
    ex.notify_done(done.append)
    transport, pending = ex.take_over()
    assert transport is t and pending == b"early frame and more"
    assert t.producer is None  # the protocol is no longer the transport's producer
    assert s.clock.getDelayedCalls() == []  # nor its timers
    assert ex.code == 101 and not ex.finished
    with pytest.raises(RuntimeError):
        ex.take_over()
    ex.write(b"ignored")
    assert t.value() == b""  # the caller writes from now on
    proto.connectionLost(Failure(ConnectionDone()))  # not its business any more
    assert done == []
    ex.finish()  # the tunnel closed
    assert done == [None]


# -- the head parser on its own ---------------------------------------------------------


def test_the_head_parser_returns_the_parts_and_the_framing():
    assert parse_head(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: Chunked") == (
        b"PUT", b"/x", b"HTTP/1.1", {b"Transfer-Encoding": [b"Chunked"]}, None)
    assert parse_head(b"GET / HTTP/1.0\r\nContent-Length: 0012")[4] == 12
    assert parse_head(b"GET / HTTP/1.0")[3:] == ({}, 0)
    for bad, code in ((b"GET / HTTP/1.1\r\nX: \x00", 400),
                      (b"GET /" + b"a" * MAX_HEAD_SIZE + b" HTTP/1.1", 414)):
        with pytest.raises(HeadError) as e:
            parse_head(bad)
        assert e.value.code == code
