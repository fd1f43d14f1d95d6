"""
Request heads: one function from the bytes of a whole head (request line
and header lines, without the blank line that ends it) to its parts, with
Go's strictness.

A proxy sits between two parsers, and a head they read differently is a
smuggling vector, so anything ambiguous is refused with L{HeadError}:
control characters (HTAB aside) and bare CR or LF, folded lines
(obs-fold), names that are not tokens, a request-target in no allowed
form, and every framing but one Content-Length or one
``Transfer-Encoding: chunked`` on HTTP/1.1.

The parser is this one function, so that another (httptools) could take
its place; the protocol only finds where a head ends and bounds its size.
"""

from __future__ import annotations

import re
from typing import Optional

from keda_proxy.wire._framing import content_length
from keda_proxy.wire._headers import CANONICAL_NAMES, InvalidHeaderName, canonical_name
from keda_proxy.wire._memo import remember

#: Whole request head (line and headers, line ends not counted) limit, as
#: Go's 1 MiB is too generous for a Python proxy; 64 KiB covers large
#: cookies and JWTs.
MAX_HEAD_SIZE = 64 * 1024
#: Header lines a head may hold (twisted.web's limit, which the proxy had).
MAX_HEADERS = 500


class HeadError(ValueError):
    """A head the proxy will not read: answer C{code} and close."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


#: RFC 9110 token characters, and the request-target bytes twisted.web takes
_TOKEN_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                b"!#$%&'*+-.^_`|~")
_TARGET_BYTES = bytes(range(33, 177))


def parse_request_line(line: bytes):
    """C{(method, target, version)}, with twisted.web's answers (which the
    proxy kept), checking the method and the target in C
    (C{bytes.translate}) rather than with a Python loop over every byte of
    the URL.  Raises C{ValueError}."""
    method, target, version = line.split(b" ")
    if not method or method.translate(None, _TOKEN_BYTES):
        raise ValueError("Invalid method")
    if target.translate(None, _TARGET_BYTES):
        raise ValueError("Invalid request-target")
    if not target:
        raise ValueError("Empty request-target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise ValueError("Invalid version")
    return method, target, version


#: the control characters a request head may not hold, HTAB aside (CR and
#: LF only as the CRLF pairs that end its lines): deleting them from a head
#: must remove exactly its line ends, in one C pass
_CONTROL = bytes(c for c in range(32) if c != 9) + b"\x7f"
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]").match


def _other_target_form(method: bytes, target: bytes) -> bool:
    """Whether a target that is not origin-form is allowed: absolute form,
    ``*`` for OPTIONS, or anything for CONNECT (which the request path
    answers 405)."""
    if method == b"CONNECT":
        return True
    if target == b"*":
        return method == b"OPTIONS"
    return _ABSOLUTE_FORM(target) is not None


def _request_line(line: bytes):
    """C{(method, target, version)} of a request line that is in an
    allowed form, remembered for lines seen again; raises L{HeadError}."""
    try:
        method, target, version = parse_request_line(line)
    except ValueError:
        raise HeadError(400) from None
    if target[:1] != b"/" and not _other_target_form(method, target):
        raise HeadError(400)
    parts = (method, target, version)
    if len(line) <= _LINE_KEPT_MAX:
        remember(_REQUEST_LINES, line, parts)
    return parts


#: request line -> its parts, for lines seen before (the same few paths
#: come again and again); long lines, unlikely to repeat, are not kept
_REQUEST_LINES: dict = {}
_LINE_KEPT_MAX = 256


def parse_head(head: bytes):
    """The parts of a request head: C{(method, target, version, headers,
    length)}.

    C{headers} maps each canonical name (C{Content-Type}) to its values, a
    list of bytes trimmed of spaces and tabs, in arrival order.
    C{length} is the body's: 0 for none, or None for a chunked one.

    @raise HeadError: with 400, or 414/431 for a head over
        L{MAX_HEAD_SIZE} (414 when the request line alone is).
    """
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    size = len(head) - 2 * breaks
    if size > MAX_HEAD_SIZE:
        raise HeadError(414 if len(lines[0]) > MAX_HEAD_SIZE else 431)
    if breaks > MAX_HEADERS or len(head.translate(None, _CONTROL)) != size:
        # too many fields; control characters, a bare CR or LF
        raise HeadError(400)
    line = lines[0]
    parts = _REQUEST_LINES.get(line)
    method, target, version = parts if parts is not None else _request_line(line)
    del lines[0]
    headers: dict = {}
    known = CANONICAL_NAMES
    for line in lines:
        # a folded line (obs-fold) starts with a space or a tab, which no
        # name has: it is refused with the names that are not tokens
        name, sep, value = line.partition(b":")
        key = known.get(name)
        if key is None or not sep:
            if not sep:
                raise HeadError(400)
            try:
                key = canonical_name(name)
            except InvalidHeaderName:
                raise HeadError(400) from None
        values = headers.get(key)
        if values is None:
            headers[key] = [value.strip(b" \t")]
        else:
            values.append(value.strip(b" \t"))
    if b"Content-Length" in headers or b"Transfer-Encoding" in headers:
        return method, target, version, headers, _framing(headers, version)
    return method, target, version, headers, 0


def _framing(headers: dict, version: bytes) -> Optional[int]:
    """The body's length from its one Content-Length, None for its one
    ``Transfer-Encoding: chunked`` (HTTP/1.1 only), 0 for neither; anything
    else, or both, is a 400 (see L{keda_proxy.wire._framing})."""
    lengths = headers.get(b"Content-Length")
    codings = headers.get(b"Transfer-Encoding")
    if lengths is None:
        if codings is None:
            return 0
        if len(codings) == 1 and codings[0].lower() == b"chunked" and version == b"HTTP/1.1":
            return None
        raise HeadError(400)
    if codings is None and len(lengths) == 1:
        length = content_length(lengths[0])
        if length is not None:
            return length
    raise HeadError(400)


def oversized(buffered) -> Optional[int]:
    """For a head still incomplete: 414 or 431 if what has arrived is over
    L{MAX_HEAD_SIZE} already (414 while the request line is), else None."""
    if len(buffered) <= MAX_HEAD_SIZE:
        return None
    if len(buffered) - 2 * buffered.count(b"\r\n") - buffered.endswith(b"\r") <= MAX_HEAD_SIZE:
        return None
    first = buffered.find(b"\r\n")
    return 414 if first < 0 or first > MAX_HEAD_SIZE else 431
