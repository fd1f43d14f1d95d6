"""
Requests the proxy refuses where Go's server refuses them: anything two
parsers could read differently (RFC 9112 §6, §7.1) gets a 400 and never
reaches an upstream.  Every case is sent whole (one read, the one-pass
parser) and a byte at a time (twisted.web's line parser).
"""

import pytest

from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError, CountedDecoder, content_length
from tests.proxyfakes import Harness, status_line
from tests.test_proxy import warm

HOST = b"Host: example.com\r\n"


def _answer(raw: bytes, trickle: bool):
    h = Harness()
    warm(h)
    proto, t = h.connect()
    for piece in ([raw[i:i + 1] for i in range(len(raw))] if trickle else [raw]):
        proto.dataReceived(piece)
    return h, t


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "trickled"])
@pytest.mark.parametrize("raw", [
    # lengths that overflow 63 bits
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 9223372036854775808\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999999\r\n\r\n",
    # Transfer-Encoding twice, on separate lines; or not chunked alone
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: identity\r\n\r\n",
    # Transfer-Encoding on HTTP/1.0
    b"POST / HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # obs-fold
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: one\r\n two\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: one\r\n\ttwo\r\n\r\n",
    # control characters in a value (HTAB is fine, see below)
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x1fb\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n",
    # request-targets in no allowed form
    b"GET foo HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET example.com:80 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET http:/x HTTP/1.1\r\n" + HOST + b"\r\n",
])
def test_ambiguous_requests_are_400_and_never_forwarded(raw, trickle):
    h, t = _answer(raw, trickle)
    assert status_line(t) == b"HTTP/1.1 400 Bad Request"
    assert h.dials == []


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "trickled"])
@pytest.mark.parametrize("raw, line", [
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\tb\r\n\r\n", b"GET / HTTP/1.1"),
    (b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", b"OPTIONS * HTTP/1.1"),
    (b"GET http://example.com/p?q HTTP/1.1\r\n" + HOST + b"\r\n", b"GET /p?q HTTP/1.1"),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0009\r\n\r\n123456789",
     b"POST / HTTP/1.1"),
])
def test_what_go_accepts_is_forwarded(raw, line, trickle):
    h, t = _answer(raw, trickle)
    assert h.upstream().request_line() == line


@pytest.mark.parametrize("body", [
    b"10000000000000000\r\nx",         # 17 hex digits: past 63 bits
    b"8000000000000000\r\nx",          # 2**63
    b"5\r\nhelloX\r\n0\r\n\r\n",      # data not ended by CRLF
    b"+5\r\nhello\r\n0\r\n\r\n",      # not hex
    b"5\nhello\r\n0\r\n\r\n",         # a bare LF after the size
])
def test_bad_chunked_request_bodies_end_the_connection_with_400(body):
    h, t = _answer(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                   + body, False)
    assert status_line(t) == b"HTTP/1.1 400 Bad Request"
    assert t.disconnecting


# -- the framing module on its own -------------------------------------------------

def _decode(pieces):
    out, done = [], []
    d = ChunkedDecoder(out.append, done.append)
    for p in pieces:
        d.dataReceived(p)
    return b"".join(out), done, d


@pytest.mark.parametrize("split", [1, 2, 3, 7, 100])
def test_chunked_decoding_is_the_same_however_the_bytes_arrive(split):
    raw = b"5;ext=1\r\nhello\r\nA \t\r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\nnext"
    body, done, d = _decode([raw[i:i + split] for i in range(0, len(raw), split)])
    assert body == b"hello0123456789"
    assert d.trailers == [b"X-T: 1", b"X-U: 2"]
    assert b"".join(done) == b"next"[:len(b"".join(done))] and d.finished


def test_chunk_size_and_trailer_lines_are_bounded():
    with pytest.raises(ChunkedError):
        _decode([b"5;" + b"x" * 2000])
    with pytest.raises(ChunkedError):
        _decode([b"0\r\n" + b"X-T: " + b"y" * 20000])
    with pytest.raises(ChunkedError):
        _decode([b"0\r\n" + b"X-T: 1\r\n" * 3000])


def test_a_cut_short_body_is_an_error_at_the_end():
    _, _, d = _decode([b"5\r\nhel"])
    with pytest.raises(ChunkedError):
        d.noMoreData()
    counted = CountedDecoder(5, lambda data: None, lambda rest: None)
    counted.dataReceived(b"hel")
    with pytest.raises(ChunkedError):
        counted.noMoreData()


def test_a_counted_body_passes_on_its_length_and_hands_back_the_rest():
    out, rest = [], []
    d = CountedDecoder(5, out.append, rest.append)
    d.dataReceived(b"he")
    d.dataReceived(b"lloGET /")
    assert out == [b"he", b"llo"] and rest == [b"GET /"] and d.finished


@pytest.mark.parametrize("value, expected", [
    (b"0", 0), (b"0012", 12), (b"9223372036854775807", 2 ** 63 - 1),
    (b"9223372036854775808", None), (b"-1", None), (b"+1", None), (b"1 ", None),
    (b"1,1", None), (b"", None), (b"\xd9\xa1", None),  # an Arabic-Indic digit
])
def test_content_length_is_plain_decimal_within_63_bits(value, expected):
    assert content_length(value) == expected
