"""Tests for keda_proxy.http1client.parse_head: what an upstream may send."""

import pytest

from keda_proxy.http1client import UpstreamProtocolError, parse_head


def test_status_line_and_headers_in_order():
    code, phrase, version, headers, framing = parse_head(
        b"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nX-Y:  spaced \t\r\nSet-Cookie: b=2\r\n"
        b"content-LENGTH: 5\r\nTransfer-Encoding: chunked")
    assert (code, phrase, version) == (404, b"Not Found", b"HTTP/1.1")
    assert headers == [(b"Set-Cookie", b"a=1"), (b"X-Y", b"spaced"), (b"Set-Cookie", b"b=2"),
                       (b"content-LENGTH", b"5"), (b"Transfer-Encoding", b"chunked")]
    assert framing == [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]


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
])
def test_malformed_heads_are_refused(head):
    with pytest.raises(UpstreamProtocolError):
        parse_head(head)
