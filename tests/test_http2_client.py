"""Tests for keda_proxy.upstream._http2client: one HTTP/2 connection to an
upstream and its streams, against an h2 server in memory (tests/h2fakes.py)."""

import pytest
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IUpstreamExchange
from keda_proxy.upstream import _http2client as http2client
from keda_proxy.upstream._h2fields import request_fields, response_head
from keda_proxy.upstream._http1client import CLOSED, UpstreamProtocolError
from keda_proxy.upstream._http2client import (
    HIGH_WATER,
    STREAM_WINDOW,
    H2ClientConnection,
    UpstreamReset,
)
from tests.h2fakes import GET, POST, Producer, Sink, handshake

OK = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"5")]


class Owner:
    def __init__(self):
        self.lost = []
        self.idle = []

    def connection_reusable(self, stream):
        stream.release()

    def connection_lost(self, conn):
        self.lost.append(conn)

    def connection_idle(self, conn):
        self.idle.append(conn)


def connection(settings=None, scheme=b"http"):
    clock = Clock()
    conn = H2ClientConnection(clock, scheme, b"web.default:8080")
    conn.owner = Owner()
    transport = StringTransport()
    conn.makeConnection(transport)
    server = handshake(conn, transport, settings)
    return clock, conn, server


def send(conn, head=GET, has_body=False, method=b"GET"):
    stream = conn.new_stream()
    sink = Sink()
    stream.send(method, head, sink, chunked_body=has_body, has_body=has_body)
    return stream, sink


# -- translation -------------------------------------------------------------------


def test_the_request_head_becomes_pseudo_headers_and_lower_case_fields():
    head = (b"GET /a/b?c=d HTTP/1.1\r\nHost: web.example:8080\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTransfer-Encoding: chunked\r\n"
            b"Upgrade: h2c\r\nTE: trailers\r\nX-Forwarded-For: 10.1.2.3\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\n\r\n")
    assert request_fields(head, b"http", b"fallback:80") == [
        (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web.example:8080"),
        (b":path", b"/a/b?c=d"),
        (b"te", b"trailers"), (b"x-forwarded-for", b"10.1.2.3"),
        (b"cookie", b"a=1"), (b"cookie", b"b=2"),
    ]


def test_te_other_than_trailers_is_dropped_and_a_missing_host_is_the_upstreams():
    head = b"OPTIONS * HTTP/1.1\r\nTE: gzip\r\n\r\n"
    assert request_fields(head, b"https", b"web.default:8443") == [
        (b":method", b"OPTIONS"), (b":scheme", b"https"), (b":authority", b"web.default:8443"),
        (b":path", b"*"),
    ]


def test_the_request_goes_out_as_headers_with_end_stream_when_bodiless():
    clock, conn, server = connection()
    stream, sink = send(conn)
    events = server.read()
    [req] = [e for e in events if isinstance(e, RequestReceived)]
    assert req.headers[:4] == [(b":method", b"GET"), (b":scheme", b"http"),
                               (b":authority", b"web.example"), (b":path", b"/hello?x=1")]
    assert req.stream_ended is not None
    assert stream.uses == 1 and stream.stream_id == 1


def test_tls_requests_say_https():
    clock, conn, server = connection(scheme=b"https")
    send(conn)
    [req] = [e for e in server.read() if isinstance(e, RequestReceived)]
    assert (b":scheme", b"https") in req.headers


def test_the_response_becomes_the_same_head_as_an_http1_one():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, OK + [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"x-a", b"1")],
                   b"hello")
    head = sink.head
    assert (head.code, head.phrase, head.version) == (200, b"OK", b"HTTP/2")
    assert head.block == (b"Content-Type: text/plain\r\nContent-Length: 5\r\n"
                          b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-A: 1\r\n")
    assert (head.length, head.chunked, head.close, head.has_date) == (5, False, False, True)
    assert head.lines == (b"Content-Type: text/plain", b"Content-Length: 5",
                          b"Date: Mon, 01 Jan 2024 00:00:00 GMT", b"X-A: 1")
    assert sink.body == b"hello" and sink.calls == ["head", "data", "done"]
    assert sink.trailers is None
    assert not stream.more_expected and stream.answered


def test_a_response_ending_with_its_headers_says_content_length_0():
    head = response_head([(b":status", b"200")], ended=True)
    assert (head.length, head.block) == (0, b"Content-Length: 0\r\n")
    # but not for HEAD, 204 or 304, nor for one whose body follows
    assert response_head([(b":status", b"200")], head_only=True, ended=True).length is None
    assert response_head([(b":status", b"204")], ended=True).block == b""
    assert response_head([(b":status", b"200")]).length is None


def test_response_values_with_cr_lf_or_nul_are_refused():
    for value in (b"a\r\nSet-Cookie: x=1", b"a\nb", b"a\x00b"):
        with pytest.raises(UpstreamProtocolError):
            response_head([(b":status", b"200"), (b"x-a", value)])


def test_a_bad_response_header_resets_the_stream_and_fails_it():
    """A name that is not a token (which h2 lets through) is refused: the
    stream is reset, the connection goes on."""
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.h2.config.validate_outbound_headers = False
    server.respond(1, [(b":status", b"200"), (b"x@y", b"1")], end=False)
    assert sink.calls == ["failed"] and sink.failure.check(UpstreamProtocolError)
    assert sink.started is False
    [reset] = [e for e in server.read() if isinstance(e, StreamReset)]
    assert reset.error_code == ErrorCodes.PROTOCOL_ERROR
    assert conn.allocated == 0 and conn.usable  # the connection goes on


def test_a_value_with_cr_is_refused_by_h2_and_ends_the_connection():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.h2.config.validate_outbound_headers = False
    server.respond(1, [(b":status", b"200"), (b"x-a", b"a\r\nSet-Cookie: x=1")], end=False)
    assert sink.calls == ["failed"] and sink.failure.check(UpstreamProtocolError)
    assert conn.closed


def test_informational_responses_go_ahead_but_100():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.h2.send_headers(1, [(b":status", b"100")])
    server.h2.send_headers(1, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
    server.respond(1, OK, b"hello")
    assert sink.calls[0] == ("informational", 103)
    assert sink.calls[1:] == ["head", "data", "done"]


# -- trailers -----------------------------------------------------------------------


def test_trailers_reach_the_sink_as_canonical_pairs():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200"), (b"content-type", b"application/grpc")],
                   b"\x00\x00\x00\x00\x02hi",
                   trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"fine"),
                             (b"content-length", b"9")])
    assert sink.calls == ["head", "data", "done"]
    assert sink.trailers == [(b"Grpc-Status", b"0"), (b"Grpc-Message", b"fine")]
    assert sink.head.length is None  # the HTTP/1.1 client side reads chunks, and trailers


def test_a_trailers_only_response_is_a_head_and_its_end():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                       (b"grpc-status", b"5"), (b"grpc-message", b"not found")])
    assert sink.calls == ["head", "done"]
    assert b"Grpc-Status: 5\r\n" in sink.head.block


def test_the_request_body_and_its_trailers_go_as_data_then_headers():
    clock, conn, server = connection()
    stream, sink = send(conn, POST, has_body=True, method=b"POST")
    stream.write_body(b"\x00\x00\x00\x00\x02hi")
    stream.end_body([(b"Grpc-Foo", b"bar"), (b"Content-Length", b"7")])
    events = server.read()
    kinds = [type(e).__name__ for e in events]
    assert kinds[-4:] == ["RequestReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    [req] = [e for e in events if isinstance(e, RequestReceived)]
    assert (b"te", b"trailers") in req.headers
    assert not any(name == b"transfer-encoding" for name, _ in req.headers)
    assert req.stream_ended is None
    assert events[-3].data == b"\x00\x00\x00\x00\x02hi"
    assert events[-2].headers == [(b"grpc-foo", b"bar")]


# -- flow control -------------------------------------------------------------------


def _window_updates(events, stream_id):
    return [e for e in events if isinstance(e, WindowUpdated) and e.stream_id == stream_id]


def test_a_stream_whose_client_keeps_up_hands_its_window_back():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    assert server.send_data(1, 600 * 1024) == 600 * 1024
    assert _window_updates(server.read(), 1)


def test_a_paused_stream_stops_acknowledging_until_it_resumes():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    stream.transport.pauseProducing()
    sent = server.send_data(1, 2 * STREAM_WINDOW)
    assert sent == STREAM_WINDOW  # the upstream's window closed: no more
    assert len(sink.body) == STREAM_WINDOW  # what came was passed on
    assert not _window_updates(server.read(), 1)
    assert server.h2.local_flow_control_window(1) == 0
    stream.transport.resumeProducing()
    assert _window_updates(server.read(), 1)
    assert server.h2.local_flow_control_window(1) == STREAM_WINDOW


def test_a_paused_stream_does_not_hold_the_others_up():
    clock, conn, server = connection()
    slow, _ = send(conn)
    fast, fast_sink = send(conn)
    server.read()
    slow.transport.pauseProducing()
    server.respond(1, [(b":status", b"200")], end=False)
    server.send_data(1, STREAM_WINDOW)
    server.respond(3, [(b":status", b"200")], end=False)
    assert server.send_data(3, 3 * STREAM_WINDOW, end=True) == 3 * STREAM_WINDOW
    assert fast_sink.done


def test_the_request_body_is_paused_while_the_window_is_closed():
    clock, conn, server = connection()
    stream, sink = send(conn, POST, has_body=True, method=b"POST")
    body = Producer()
    stream.transport.registerProducer(body, True)
    stream.write_body(b"x" * 65535)  # the default window, all sent
    assert not body.paused
    stream.write_body(b"y" * (HIGH_WATER + 10))  # waits: over the high-water mark
    assert body.paused
    events = server.read_held()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 65535
    server.h2.acknowledge_received_data(65535, 1)
    server.h2.increment_flow_control_window(65535)  # and the connection's
    server.flush()
    assert not body.paused  # most of what waited went out
    events = server.read_held()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 65535
    stream.end_body()
    assert not any(isinstance(e, StreamEnded) for e in server.read())  # not before the rest
    server.h2.increment_flow_control_window(65535, 1)
    server.h2.increment_flow_control_window(65535)
    server.flush()
    events = server.read()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == \
        HIGH_WATER + 10 - 65535
    assert isinstance(events[-1], StreamEnded)


def test_the_request_body_is_paused_while_the_transport_is_full():
    clock, conn, server = connection()
    stream, sink = send(conn, POST, has_body=True, method=b"POST")
    body = Producer()
    stream.transport.registerProducer(body, True)
    conn.pauseProducing()  # as the TCP transport does when its buffer is full
    assert body.paused
    conn.resumeProducing()
    assert not body.paused and body.pauses == 1


# -- resets -------------------------------------------------------------------------


def test_an_upstream_reset_fails_the_exchange():
    clock, conn, server = connection()
    before, before_sink = send(conn)
    after, after_sink = send(conn)
    server.read()
    server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    server.respond(3, [(b":status", b"200")], end=False)
    server.h2.reset_stream(3, ErrorCodes.CANCEL)
    server.flush()
    assert before_sink.failure.check(UpstreamReset) and before_sink.started is False
    assert after_sink.failure.check(UpstreamReset) and after_sink.started is True
    assert conn.allocated == 0 and conn.usable


def test_a_refused_stream_fails_as_never_answered():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    server.flush()
    assert sink.failure.check(ConnectionDone) and sink.started is False
    assert not stream.answered


def test_abort_resets_the_stream_and_tells_nobody():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    stream.abort()
    server.respond(1, OK, end=False)  # in flight as the reset goes: dropped
    server.h2.send_data(1, b"hello")
    server.flush()
    resets = [e for e in server.read() if isinstance(e, StreamReset)]
    assert resets[0].error_code == ErrorCodes.CANCEL
    assert sink.calls == []
    assert conn.allocated == 0 and stream.transport is None


def test_abort_with_resets_and_reports():
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    stream.abort_with(RuntimeError("deadline"))
    assert sink.calls == ["head", "failed"] and sink.started is True
    assert sink.failure.check(RuntimeError)
    assert [e.error_code for e in server.read() if isinstance(e, StreamReset)] == \
        [ErrorCodes.CANCEL]


def test_a_response_complete_before_the_request_body_cuts_the_body():
    clock, conn, server = connection()
    stream, sink = send(conn, POST, has_body=True, method=b"POST")
    stream.write_body(b"partial")
    server.read()
    server.respond(1, [(b":status", b"413")])
    assert sink.calls == ["head", "done"]
    assert [e.error_code for e in server.read() if isinstance(e, StreamReset)] == \
        [ErrorCodes.CANCEL]
    stream.write_body(b"more")  # the proxy may still be delivering: nothing goes out
    assert server.transport.value() == b""
    assert conn.allocated == 0


# -- timers ---------------------------------------------------------------------------


def test_the_response_header_timer_fires_unless_disarmed():
    clock, conn, server = connection()
    fired = []
    stream, sink = send(conn)
    stream.arm_timer(5, lambda: fired.append(1))
    clock.advance(4)
    stream.disarm_timer()
    clock.advance(2)
    assert fired == []
    stream.arm_timer(5, lambda: fired.append(2))
    clock.advance(5)
    assert fired == [2]


# -- the connection -----------------------------------------------------------------


def test_streams_count_against_the_upstreams_max_concurrent_streams():
    clock, conn, server = connection({SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    assert conn.room() == 2
    a, _ = send(conn)
    b, _ = send(conn)
    assert conn.room() == 0
    unused = conn.new_stream()  # handed out beyond the room: it waits
    assert conn.room() == 0
    unused.release()
    server.read()
    server.respond(1, OK, b"hello")
    assert conn.room() == 1


def test_a_stream_sent_beyond_the_limit_waits_for_a_place():
    clock, conn, server = connection()
    conn.max_streams = 1  # as the upstream's SETTINGS could lower it
    a, a_sink = send(conn)
    b, b_sink = send(conn)
    assert b.stream_id is None and list(conn.waiting) == [b]
    server.read()
    server.respond(1, OK, b"hello")
    assert b.stream_id == 3
    server.read()
    server.respond(3, OK, b"world")
    assert a_sink.body == b"hello" and b_sink.body == b"world"


def goaway(last_stream_id, code=0) -> bytes:
    """A GOAWAY frame (an h2 server that sent one would send nothing more)."""
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()


def test_goaway_lets_the_covered_streams_finish_and_refuses_the_rest():
    clock, conn, server = connection()
    first, first_sink = send(conn)
    second, second_sink = send(conn)
    server.read()
    conn.dataReceived(goaway(1))
    assert second_sink.failure.check(ConnectionDone) and second_sink.started is False
    assert second.uses == 2 and not second.answered  # what the proxy needs to replay it
    assert not conn.usable and conn.room() == 0 and conn.owner.lost == [conn]
    assert not server.transport.disconnecting
    server.respond(1, OK, b"hello")  # frames after the GOAWAY still count
    assert first_sink.calls == ["head", "data", "done"] and first_sink.body == b"hello"
    assert server.transport.disconnecting  # closed with its last stream


def test_a_protocol_error_fails_every_stream_and_closes_with_goaway():
    clock, conn, server = connection()
    a, a_sink = send(conn)
    b, b_sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    conn.dataReceived(b"\x00\x00\x04\x09\x00\x00\x00\x00\x03junk")  # a stray CONTINUATION
    assert a_sink.failure.check(UpstreamProtocolError) and a_sink.started is True
    assert b_sink.failure.check(UpstreamProtocolError) and b_sink.started is False
    assert any(isinstance(e, ConnectionTerminated) for e in server.read())
    assert server.transport.disconnecting and conn.owner.lost == [conn]


def test_a_lost_connection_fails_every_stream():
    clock, conn, server = connection()
    a, a_sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    b, b_sink = send(conn)
    conn.connectionLost(Failure(ConnectionLost()))
    assert a_sink.failure.check(ConnectionLost) and a_sink.started is True
    assert b_sink.failure.check(ConnectionLost) and b_sink.started is False
    assert a.state == CLOSED and conn.owner.lost == [conn]


def test_the_connection_says_when_it_has_no_stream_left():
    clock, conn, server = connection()
    stream, sink = send(conn)
    clock.advance(3)
    server.read()
    server.respond(1, OK, b"hello")
    assert conn.owner.idle == [conn] and conn.idle and conn.idle_since == 3
    conn.close()
    assert any(isinstance(e, ConnectionTerminated) for e in server.read())
    assert server.transport.disconnecting


def test_the_connection_asks_for_large_windows():
    clock, conn, server = connection()
    send(conn)
    server.read()
    assert server.h2.outbound_flow_control_window >= 1 << 30  # the connection's
    assert server.h2.local_flow_control_window(1) == STREAM_WINDOW
    assert server.h2.remote_settings.enable_push == 0


def test_a_stream_is_an_upstream_exchange():
    clock, conn, server = connection()
    stream = conn.new_stream()
    assert verifyObject(IUpstreamExchange, stream)
    assert stream.usable and stream.uses == 0
    stream.release()
    assert conn.allocated == 0 and not stream.usable


def test_data_withheld_by_a_stream_is_handed_back_to_the_connection_when_it_ends(
        monkeypatch):
    """A paused stream's data counts against the connection's window too:
    when the stream is over, that part is handed back."""
    monkeypatch.setattr(http2client, "CONNECTION_WINDOW", STREAM_WINDOW)
    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(1, [(b":status", b"200")], end=False)
    stream.transport.pauseProducing()
    server.send_data(1, 600 * 1024)
    assert server.h2.outbound_flow_control_window == STREAM_WINDOW - 600 * 1024
    stream.abort()
    server.read()
    assert server.h2.outbound_flow_control_window == STREAM_WINDOW


def test_a_large_body_chunk_goes_out_whole_in_frames_as_the_windows_open():
    clock, conn, server = connection()
    stream, sink = send(conn, POST, has_body=True, method=b"POST")
    chunk = bytes(range(256)) * 1200  # 300 KiB in one write, above every window
    stream.write_body(chunk)
    stream.end_body()
    received = b""
    for _ in range(20):
        events = server.read()  # acknowledges, so the client sends more
        received += b"".join(e.data for e in events if isinstance(e, DataReceived))
        if any(isinstance(e, StreamEnded) for e in events):
            break
        server.h2.increment_flow_control_window(65535)  # the connection's, too
        server.flush()
    assert received == chunk


def test_a_response_that_ends_short_of_its_length_is_refused():
    for status, method, refused in [(b"200", b"GET", True), (b"304", b"GET", False),
                                    (b"200", b"HEAD", False)]:
        clock, conn, server = connection()
        head = GET.replace(b"GET", method, 1)
        stream, sink = send(conn, head, method=method)
        server.read()
        server.respond(1, [(b":status", status), (b"content-length", b"10")])
        if refused:
            assert sink.calls == ["failed"] and sink.failure.check(UpstreamProtocolError)
        else:
            assert sink.calls == ["head", "done"] and sink.head.length == 10


def test_a_stream_h2_will_not_open_yet_waits_rather_than_fails():
    clock, conn, server = connection({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    conn.max_streams = 2  # as if the count of open streams disagreed with h2's
    a, a_sink = send(conn)
    b, b_sink = send(conn)
    assert b.stream_id is None and list(conn.waiting) == [b] and b_sink.calls == []
    server.read()
    server.respond(1, OK, b"hello")
    assert b.stream_id == 3
    server.read()
    server.respond(3, OK, b"world")
    assert b_sink.body == b"world"


# -- memory --------------------------------------------------------------------------


def test_streams_and_a_closed_connection_leave_nothing_for_the_collector():
    """Reference counting alone frees finished streams and a closed
    connection: the interceptor runs full collections rarely."""
    import gc

    from keda_proxy.wire._h2state import release

    clock, conn, server = connection()
    stream, sink = send(conn)
    server.read()
    server.respond(stream.stream_id, [(b":status", b"200")], b"hello")
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            stream, sink = send(conn)
            server.read()
            server.respond(stream.stream_id, [(b":status", b"200")], b"hello",
                           trailers=[(b"grpc-status", b"0")])
            assert sink.done and sink.trailers
        del stream, sink
        assert gc.collect() == 0
        conn.connectionLost(Failure(ConnectionDone()))
        # what the test's fakes keep, which the pool and a real transport
        # drop: the lost connection, and the transport's producer
        conn.owner.lost.clear()
        conn.owner.idle.clear()
        conn.transport.unregisterProducer()
        release(server.h2)  # the test's own server, an h2 connection too
        del conn, server
        assert gc.collect() == 0
    finally:
        gc.enable()
