"""Reason phrases, as Go writes them."""

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
