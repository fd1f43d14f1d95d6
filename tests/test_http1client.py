"""Tests for keda_proxy.upstream._http1client.parse_head: what an upstream may send."""

import pytest

from keda_proxy.upstream._http1client import (
    _HEAD_KEPT_MAX,
    _HEADS,
    _HEADS_LIMIT,
    _LINES,
    _STATUS_LINES,
    UpstreamProtocolError,
    parse_head,
)
from keda_proxy.wire._memo import LIMIT as _LINES_MAX


def test_status_line_and_end_to_end_headers_in_order():
    head = parse_head(
        b"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nX-Y:  spaced \t\r\nSet-Cookie: b=2\r\n"
        b"content-LENGTH: 5\r\nx-lower: v\r\nContent-Type: text/plain")
    assert (head.code, head.phrase, head.version) == (404, b"Not Found", b"HTTP/1.1")
    # canonical names, values trimmed, order kept; Content-Length last
    assert head.block == (b"Set-Cookie: a=1\r\nX-Y: spaced\r\nSet-Cookie: b=2\r\n"
                          b"X-Lower: v\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n")
    assert (head.length, head.chunked, head.close, head.has_date) == (5, False, False, False)
    assert head.lines[0] == b"Set-Cookie: a=1" and len(head.lines) == 6


def test_hop_by_hop_headers_and_those_connection_names_are_left_out():
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
        b"X-Secret: s\r\nx-secret: t\r\nUpgrade: h2c\r\nTrailer: X-T\r\n"
        b"Proxy-Authenticate: Basic\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nX-Kept: 1")
    assert head.block == b"Date: Mon, 30 Nov 2026 00:00:00 GMT\r\nX-Kept: 1\r\n"
    assert head.has_date and not head.close and head.length is None
    # the raw lines keep everything (a 101 passes them on)
    assert b"Upgrade: h2c" in head.lines


def test_connection_can_name_date_but_not_the_framing():
    head = parse_head(b"HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 3\r\n"
                      b"Connection: date, content-length")
    assert head.block == b"Content-Length: 3\r\n"
    assert head.length == 3 and not head.has_date


def test_chunked_wins_over_content_length_which_is_dropped():
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
                      b"Transfer-Encoding:  Chunked ")
    assert head.chunked and head.length is None and head.block == b""


@pytest.mark.parametrize("codings", [
    [b"xchunked"],             # not chunked, whatever it ends with
    [b"chunked, gzip"],        # chunked not last: no knowable end
    [b"gzip, chunked"],        # the client would get gzip it was not told of (Go refuses)
    [b"chunked", b"chunked"],  # twice, on separate lines
    [b""],
])
def test_transfer_codings_other_than_chunked_alone_are_refused(codings):
    lines = b"".join(b"\r\nTransfer-Encoding: " + c for c in codings)
    with pytest.raises(UpstreamProtocolError):
        parse_head(b"HTTP/1.1 200 OK" + lines)


def test_http10_responses_have_no_transfer_coding():
    """As Go reads them: the body runs to the close (or its length)."""
    head = parse_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2")
    assert not head.chunked and head.length == 2 and head.close


def test_close_and_http10_mean_no_reuse():
    assert parse_head(b"HTTP/1.1 200 OK\r\nConnection: Close").close
    assert parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1").close
    assert not parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1").close


def test_empty_reason_phrase_and_http10():
    assert parse_head(b"HTTP/1.0 200")[:3] == (200, b"", b"HTTP/1.0")
    assert parse_head(b"HTTP/1.1 204 ")[:2] == (204, b"")


@pytest.mark.parametrize("head", [
    b"SSH-2.0-OpenSSH",
    b"HTTP/1.1 2000 OK",
    b"HTTP/1.1 20 OK",
    b"HTTP/2 200 OK",
    b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2",       # bare LF: a smuggled header
    b"HTTP/1.1 200 OK\r\nX-A: 1\r2",            # bare CR
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b",          # NUL
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n continued",  # obsolete folding
    b"HTTP/1.1 200 OK\r\nX-A : 1",              # space before the colon
    b"HTTP/1.1 200 OK\r\nno colon here",
    b"HTTP/1.1 200 OK\r\n: empty name",
    b"HTTP/1.1 200 OK\r\nDate",                   # a known name, no colon
    b"HTTP/1.1 200 OK\r\nX(A): 1",                # not a token
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1",
])
def test_malformed_heads_are_refused(head):
    with pytest.raises(UpstreamProtocolError):
        parse_head(head)


GOOD_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Length: 3\r\nConnection: keep-alive",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nX-Kept: 1",
    b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Type: text/plain",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nServer: nginx",
    b"HTTP/1.0 200 OK\r\nserver: nginx\r\nKeep-Alive: timeout=5",
]


@pytest.mark.parametrize("raw", GOOD_HEADS)
def test_a_head_parses_the_same_with_its_lines_remembered(raw):
    _LINES.clear()
    _STATUS_LINES.clear()
    first = parse_head(raw)
    assert _LINES and _STATUS_LINES  # the lines were remembered...
    _HEADS.clear()  # (not the whole head: the lines are the subject here)
    again = parse_head(raw)
    assert again == first and again is not first  # ...and give the same answer


@pytest.mark.parametrize("raw", GOOD_HEADS)
def test_a_head_seen_before_gets_the_same_answer_without_a_parse(raw, monkeypatch):
    _HEADS.clear()
    first = parse_head(raw)
    assert isinstance(first.lines, tuple)  # shared between responses: immutable
    # a parse would fail
    monkeypatch.setattr("keda_proxy.upstream._http1client._STATUS_LINES", None)
    assert parse_head(raw) is first


def test_remembered_heads_are_bounded_and_only_good_short_ones():
    _HEADS.clear()
    for i in range(_HEADS_LIMIT + 10):
        parse_head(b"HTTP/1.1 200 OK\r\nX-Request-Id: %d" % i)
    assert 0 < len(_HEADS) <= _HEADS_LIMIT
    long_head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * _HEAD_KEPT_MAX
    assert parse_head(long_head).block == long_head[17:] + b"\r\n"
    assert long_head not in _HEADS
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2"
    for _ in range(2):
        with pytest.raises(UpstreamProtocolError):
            parse_head(bad)
    assert bad not in _HEADS


def test_remembered_lines_still_obey_the_head_they_are_in():
    _LINES.clear()
    for raw in GOOD_HEADS:
        parse_head(raw)
    parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1")
    parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2")
    # X-Secret was sent on in no head above; Connection names it here
    head = parse_head(b"HTTP/1.1 200 OK\r\nX-Secret: s\r\nConnection: x-secret\r\nServer: nginx")
    assert head.block == b"Server: nginx\r\n"
    with pytest.raises(UpstreamProtocolError):  # both lengths known, still a conflict
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2")
    with pytest.raises(UpstreamProtocolError):  # a bad line is never remembered
        parse_head(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-A : 1")
    assert b"X-A : 1" not in _LINES
    for _ in range(2):
        with pytest.raises(UpstreamProtocolError):
            parse_head(b"HTTP/1.1 2000 OK\r\nServer: nginx")
    assert b"HTTP/1.1 2000 OK" not in _STATUS_LINES


def test_remembered_lines_are_bounded():
    _LINES.clear()
    for i in range(_LINES_MAX + 100):
        parse_head(b"HTTP/1.1 200 OK\r\nX-Request-Id: %d" % i)
    assert 0 < len(_LINES) <= _LINES_MAX
    assert parse_head(b"HTTP/1.1 200 OK\r\nX-Request-Id: 7").block == b"X-Request-Id: 7\r\n"
    long_line = b"Set-Cookie: " + b"x" * 300
    assert parse_head(b"HTTP/1.1 200 OK\r\n" + long_line).block == long_line + b"\r\n"
    assert long_line not in _LINES  # long lines are not kept


def test_the_response_timer_follows_the_latest_deadline_without_a_timer_per_request():
    from twisted.internet.task import Clock

    from keda_proxy.upstream._http1client import UpstreamConnection

    clock = Clock()
    conn = UpstreamConnection(clock)
    fired = []
    conn.arm_timer(10, lambda: fired.append(("a", clock.seconds())))
    clock.advance(8)
    conn.disarm_timer()
    conn.arm_timer(10, lambda: fired.append(("b", clock.seconds())))  # due at 18
    assert len(clock.getDelayedCalls()) == 1  # the same timer, left running
    clock.advance(2)
    assert fired == []  # the first deadline passed while disarmed: nothing
    clock.advance(7.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == [("b", 18.0)]
    conn.arm_timer(10, lambda: fired.append(("c", clock.seconds())))  # due at 28
    clock.advance(1)
    conn.arm_timer(2, lambda: fired.append(("d", clock.seconds())))  # sooner: 21
    clock.advance(2)
    assert fired[-1] == ("d", 21.0)
    clock.advance(20)
    assert len(fired) == 2 and clock.getDelayedCalls() == []


class _Sink:
    """Records what an upstream connection tells its sink."""

    def __init__(self, log):
        self.log = log

    def response_head(self, head):
        self.log.append(("head", head.code))

    def response_data(self, data):
        self.log.append(("data", data))

    def response_done(self, trailers=None):
        self.log.append(("done",) if trailers is None else ("done", trailers))

    def response_failed(self, reason, started):
        self.log.append(("failed", started))

    def response_whole(self, head, body):
        self.log.append(("whole", head.code, body))

    def response_informational(self, head):
        self.log.append(("informational", head.code))


class _Owner:
    def __init__(self, log):
        self.log = log

    def connection_reusable(self, conn):
        self.log.append(("pooled",))

    def connection_lost(self, conn):
        self.log.append(("lost",))


def _exchange(reads, method=b"GET", has_body=False, timeout=0):
    """A connection that sent one request and got C{reads}; what the sink
    and the pool heard, in order, and the connection."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from keda_proxy.upstream._http1client import UpstreamConnection

    log = []
    conn = UpstreamConnection(Clock())
    conn.owner = _Owner(log)
    conn.makeConnection(StringTransport())
    conn.send(method, method + b" / HTTP/1.1\r\n\r\n", _Sink(log), has_body=has_body)
    if timeout:
        conn.arm_timer(timeout, lambda: log.append(("timeout",)))
    for data in reads:
        conn.dataReceived(data)
    return log, conn


def test_a_response_that_comes_whole_is_one_call_after_the_pool_has_the_connection():
    log, conn = _exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], timeout=5)
    assert log == [("pooled",), ("whole", 200, b"hello")]
    conn.clock.advance(10)  # the response-header timer was disarmed
    assert log[-1] != ("timeout",)


def test_a_response_in_pieces_takes_the_streaming_calls():
    log, _ = _exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"])
    assert log == [("head", 200), ("data", b"hel"), ("data", b"lo"), ("pooled",), ("done",)]


@pytest.mark.parametrize("raw, method, has_body, expected", [
    # the upstream closes after it: not pooled
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", b"GET", False,
     [("whole", 200, b"hi")]),
    # a request body still unsent would be read as the next request
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"POST", True, [("whole", 200, b"hi")]),
    # no body for HEAD, whatever the length says; but a head that announces
    # one is not trusted with the next request: a sloppy upstream may send it
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", False,
     [("head", 200), ("done",)]),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HEAD", False,
     [("head", 200), ("pooled",), ("done",)]),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET", False,
     [("head", 304), ("done",)]),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", False,
     [("head", 204), ("pooled",), ("done",)]),
    # a body sent anyway, its length as announced: still none, and distrusted
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"HEAD", False,
     [("head", 200), ("done",)]),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\nhi", b"GET", False,
     [("head", 304), ("done",)]),
    # bytes past a bodiless response, in the same read: never the next
    # request's response (they would reach another client)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"GET",
     False, [("head", 200), ("done",)]),
    (b"HTTP/1.1 204 No Content\r\n\r\nsurprise", b"GET", False,
     [("head", 204), ("done",)]),
    (b"HTTP/1.1 200 OK\r\n\r\nbody for HEAD", b"HEAD", False,
     [("head", 200), ("done",)]),
    # a chunked body with bytes after its end
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nX",
     b"GET", False, [("head", 200), ("data", b"hi"), ("done",)]),
    # more than announced: what was promised, and the connection is distrusted
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi!", b"GET", False,
     [("head", 200), ("data", b"hi"), ("done",)]),
])
def test_whole_responses_are_pooled_only_when_safe(raw, method, has_body, expected):
    _HEADS.clear()
    for seen in (False, True):  # parsed, then remembered (the one-read path)
        log, conn = _exchange([raw], method=method, has_body=has_body)
        assert log == expected, seen
        assert conn.transport.disconnecting == (("pooled",) not in expected)


def test_an_informational_head_is_one_whatever_its_length_says():
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    raw = b"HTTP/1.1 103 Early Hints\r\nContent-Length: %d\r\n\r\n%s" % (len(final), final)
    _HEADS.clear()
    for seen in (False, True):  # parsed, then remembered (the one-read path)
        log, _ = _exchange([raw])
        assert log == [("informational", 103), ("pooled",), ("whole", 200, b"hi")], seen


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 2\n\nhi",  # bare LFs, read leniently
    b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
])
def test_a_head_split_anywhere_across_reads_is_read_whole(raw):
    for cut in range(1, len(raw)):
        log, _ = _exchange([raw[:cut], raw[cut:]])
        assert log[-1] in (("done",), ("whole", 200, b"hi")), (cut, log)
        assert b"".join(e[1] for e in log if e[0] == "data") in (b"", b"hi"), (cut, log)


def test_a_crlf_head_never_takes_the_lenient_bare_lf_pass(monkeypatch):
    """The lenient pass (bare LF line ends) is for broken upstreams only: a
    well-formed head, whatever its body holds, is split by the fast path."""
    import keda_proxy.upstream._http1client as client

    def refuse(head):
        raise AssertionError("lenient pass taken")

    monkeypatch.setattr(client, "_crlf_lines", refuse)
    monkeypatch.setattr(client, "_LENIENT_END", None)
    log, _ = _exchange([b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 4\r\n\r\n\n\nx\n"])
    assert log[-1] == ("whole", 200, b"\n\nx\n")


def test_a_chunked_request_body_ends_with_its_trailers():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from keda_proxy.upstream._http1client import UpstreamConnection

    log = []
    conn = UpstreamConnection(Clock())
    conn.owner = _Owner(log)
    transport = StringTransport()
    conn.makeConnection(transport)
    conn.send(b"POST", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", _Sink(log),
              chunked_body=True, has_body=True)
    conn.write_body(b"abc")
    conn.end_body([(b"Grpc-Status", b"0"), (b"X-Sum", b"9")])
    assert transport.value().endswith(b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-Sum: 9\r\n\r\n")


# -- trailers ---------------------------------------------------------------

_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_responses_trailers_reach_the_sink_as_canonical_pairs():
    log, conn = _exchange([_CHUNKED + b"2\r\nhi\r\n0\r\ngrpc-status:  0 \t\r\n"
                           b"X-Sum:9\r\nx-sum: 10\r\n\r\n"])
    assert log == [("head", 200), ("data", b"hi"), ("pooled",),
                   ("done", [(b"Grpc-Status", b"0"), (b"X-Sum", b"9"), (b"X-Sum", b"10")])]
    assert not conn.transport.disconnecting


def test_trailers_split_across_reads_arrive_whole():
    raw = _CHUNKED + b"2\r\nhi\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
    log, _ = _exchange([raw[i:i + 3] for i in range(0, len(raw), 3)])
    assert log[-1] == ("done", [(b"X-A", b"1"), (b"X-B", b"2")])


@pytest.mark.parametrize("name", [
    b"Content-Length", b"transfer-encoding", b"Host", b"Trailer", b"Connection", b"TE",
    b"Keep-Alive", b"Proxy-Connection", b"Upgrade", b"Proxy-Authenticate",
    b"Proxy-Authorization", b"Content-Type", b"Content-Encoding", b"Content-Range",
    b"Authorization", b"WWW-Authenticate",
])
def test_fields_that_must_not_be_trailers_are_dropped(name):
    log, conn = _exchange([_CHUNKED + b"0\r\n" + name + b": 5\r\nX-Kept: 1\r\n\r\n"])
    assert log[-1] == ("done", [(b"X-Kept", b"1")])
    assert ("pooled",) in log  # a dropped field is no fault of the connection


def test_no_trailer_left_is_no_trailers():
    log, _ = _exchange([_CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n"])
    assert log[-1] == ("done",)


@pytest.mark.parametrize("line", [
    b"no colon here",
    b": empty name",
    b"X-A : space before the colon",
    b"X(A): not a token",
    b"X-A: a\x00b",          # NUL
    b"X-A: a\rb",            # bare CR (the decoder's refusal)
    b" X-A: folded",          # obsolete folding (likewise)
])
def test_malformed_trailers_refuse_the_response_as_a_head_would(line):
    log, conn = _exchange([_CHUNKED + b"2\r\nhi\r\n0\r\nX-Good: 1\r\n" + line + b"\r\n\r\n"])
    assert log == [("head", 200), ("data", b"hi"), ("failed", True)]
    assert conn.transport.disconnected  # aborted, never pooled


def test_trailer_fields_rules():
    from keda_proxy.upstream._http1client import trailer_fields

    assert trailer_fields([b"x-a:1", b"Host: h", b"X-A:\t 2 "]) == [(b"X-A", b"1"),
                                                                 (b"X-A", b"2")]
    assert trailer_fields([b"Content-Length: 1"]) is None
    assert trailer_fields([]) is None
    for bad in (b"X-A\n: 1", b"X-A: 1\r", b"X-A", b"X A: 1", b"X-A: \x00"):
        with pytest.raises(UpstreamProtocolError):
            trailer_fields([bad])


def test_a_chunked_response_announces_its_trailers_again():
    head = parse_head(b"HTTP/1.1 200 OK\r\nTrailer: grpc-status, x-sum\r\nX-A: 1\r\n"
                      b"Transfer-Encoding: chunked\r\ntrailer: Content-Length,  ,x(y), "
                      b"Grpc-Status ,Host, x-more")
    assert head.chunked
    # one line, canonical names once each, none that cannot be a trailer
    assert head.block == b"X-A: 1\r\nTrailer: Grpc-Status, X-Sum, X-More\r\n"


def test_connection_naming_trailer_still_leaves_the_announcement():
    head = parse_head(b"HTTP/1.1 200 OK\r\nConnection: trailer\r\nTrailer: X-Sum\r\n"
                      b"Transfer-Encoding: chunked")
    assert head.block == b"Trailer: X-Sum\r\n"


@pytest.mark.parametrize("raw", [
    # a counted body has no trailers to announce
    b"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nContent-Length: 2",
    # nor one that ends with the connection
    b"HTTP/1.1 200 OK\r\nTrailer: X-Sum",
    # HTTP/1.0 has no chunks
    b"HTTP/1.0 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked",
    # nothing that may be a trailer
    b"HTTP/1.1 200 OK\r\nTrailer: Content-Length, Trailer\r\nTransfer-Encoding: chunked",
])
def test_a_trailer_announcement_without_trailers_to_come_is_dropped(raw):
    assert b"Trailer" not in parse_head(raw).block


def _chunked_request(trailers):
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from keda_proxy.upstream._http1client import UpstreamConnection

    conn = UpstreamConnection(Clock())
    conn.makeConnection(StringTransport())
    conn.send(b"POST", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", _Sink([]),
              chunked_body=True, has_body=True)
    conn.transport.clear()
    conn.end_body(trailers)
    return conn.transport.value()


def test_request_trailers_that_cannot_be_trailers_or_are_malformed_are_not_sent():
    sent = _chunked_request([
        (b"grpc-status", b"0"), (b"Content-Length", b"5"), (b"host", b"evil"),
        (b"Transfer-Encoding", b"chunked"), (b"X(Y)", b"1"), (b"X Y", b"1"), (b"", b"1"),
        (b"X-Split", b"a\r\nHost: evil"), (b"X-Nul", b"a\x00"), (b"X-Sum", b"9"),
    ])
    assert sent == b"0\r\nGrpc-Status: 0\r\nX-Sum: 9\r\n\r\n"


def test_request_without_trailers_ends_with_the_last_chunk():
    assert _chunked_request(None) == b"0\r\n\r\n"
    assert _chunked_request([(b"Host", b"x")]) == b"0\r\n\r\n"
