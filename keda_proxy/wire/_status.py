"""Reason phrases, and the closing refusal, as Go writes them."""

from http import HTTPStatus

_GO_PHRASES = {414: b"Request URI Too Long"}


def status_text(code: int) -> bytes:
    """The RFC 9110 reason phrase, as Go writes it ("Gateway Timeout",
    where Twisted's table still says "Gateway Time-out")."""
    if code in _GO_PHRASES:
        return _GO_PHRASES[code]
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def refusal(code: int, extra: bytes = b"", head_only: bool = False) -> bytes:
    """A whole response to a request the server will not read: Go's plain
    text (the reason and a newline), and the connection closes after it.
    C{extra}: more header lines; C{head_only}: the answer to a HEAD."""
    phrase = status_text(code)
    body = phrase + b"\n"
    return (b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, phrase, extra, len(body), b"" if head_only else body))
