"""
HTTP/2 header fields, as the proxy's HTTP/2 client writes and reads them:
the HTTP/1.1-syntax request head the proxy built becomes a HEADERS frame's
fields, and a response's HEADERS become the same L{ResponseHead} the
HTTP/1.1 client makes, so the request path does not tell them apart.
"""

from __future__ import annotations

import re
from typing import Optional

from keda_proxy.upstream._http1client import (
    ResponseHead,
    UpstreamProtocolError,
)
from keda_proxy.wire._framing import content_length
from keda_proxy.wire._headers import (
    H2_CONNECTION_SPECIFIC,
    HOP_BY_HOP,
    BadTrailer,
    InvalidHeaderName,
    canonical_name,
    sendable_trailers,
    trailer_names,
    trailer_pairs,
)
from keda_proxy.wire._status import status_text

__all__ = ["NO_BODY_CODES", "request_fields", "request_trailers", "response_head",
           "trailer_fields"]

#: request fields not sent as they are: those HTTP/2 has no place for;
#: Host becomes C{:authority}, and TE passes only as C{trailers}
_NOT_SENT = H2_CONNECTION_SPECIFIC | {b"host", b"te"}
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
#: responses that never have a body
NO_BODY_CODES = frozenset({204, 304})



def request_fields(head: bytes, scheme: bytes, authority: bytes) -> list:
    """The HEADERS of a request whose HTTP/1.1 head the proxy built
    (L{keda_proxy.wire._headers.request_head}): the pseudo-header fields,
    then its fields with lower-case names, less those HTTP/2 forbids.

    @param scheme: C{:scheme}, C{b"http"} or C{b"https"}.
    @param authority: C{:authority} when the head has no Host.
    """
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0]
    fields = []
    host = None
    for line in lines[1:]:
        if not line:
            break  # the blank line ending the head
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name in _NOT_SENT:
            if name == b"host":
                host = host or value
            elif name == b"te" and value.lower() == b"trailers":
                fields.append((b"te", b"trailers"))
            continue
        fields.append((name, value))
    authority = host or authority
    if method == b"CONNECT":
        pseudo = [(b":method", method), (b":authority", target)]
    else:
        pseudo = [(b":method", method), (b":scheme", scheme),
                  (b":authority", authority), (b":path", target)]
    return pseudo + fields


def response_head(headers, head_only: bool = False, ended: bool = False) -> ResponseHead:
    """The L{ResponseHead} of a response's HEADERS, as the HTTP/1.1 client
    makes it: canonical names, no pseudo-header or hop-by-hop field, each
    line ending in CRLF; values with CR, LF or NUL, and names that are not
    tokens, are refused (L{UpstreamProtocolError}): they would reach an
    HTTP/1.1 client as they are.

    A response that ends with its HEADERS and says no length gets
    C{Content-Length: 0}, so that an HTTP/1.1 client need not read chunks
    for nothing; one that announces trailers (C{trailer}) has them
    announced again, as the HTTP/1.1 client does.

    @param head_only: the request was a HEAD.
    @param ended: END_STREAM came with the HEADERS.
    """
    status = None
    parts = []
    lines = []
    length = None
    has_date = False
    announced = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status":
                status = value
            continue
        if _BAD_VALUE.search(value) is not None:
            raise UpstreamProtocolError(f"CR, LF or NUL in the value of {name[:80]!r}")
        if name in HOP_BY_HOP:
            if name == b"trailer":
                announced = value if announced is None else announced + b"," + value
            continue
        try:
            key = canonical_name(name)
        except InvalidHeaderName:
            raise UpstreamProtocolError(f"bad header name {name[:80]!r}") from None
        if key == b"Content-Length":
            if length is not None:
                continue  # h2 checked that they agree
            length = content_length(value)
            if length is None:
                raise UpstreamProtocolError("bad Content-Length")
        elif key == b"Date":
            has_date = True
        line = b"%s: %s" % (key, value)
        lines.append(line)
        parts.append(line + b"\r\n")
    if status is None or len(status) != 3 or not status.isdigit():
        raise UpstreamProtocolError(f"bad :status {status!r}")
    code = int(status)
    if length is None and code >= 200:
        if ended:
            if not head_only and code not in NO_BODY_CODES:
                parts.append(b"Content-Length: 0\r\n")
                length = 0
        elif announced is not None:
            names = trailer_names(announced)
            if names:
                parts.append(b"Trailer: %s\r\n" % names)
    return ResponseHead(code, status_text(code), b"HTTP/2", b"".join(parts), length,
                        False, False, has_date, tuple(lines))


def trailer_fields(headers) -> Optional[list]:
    """A response's trailing HEADERS as C{(canonical name, value)} pairs,
    or None when none is left: the rules of chunked trailers
    (L{keda_proxy.wire._headers.trailer_pairs}); pseudo-fields are left
    out, and a bad field refuses the response."""
    try:
        return trailer_pairs([field for field in headers if field[0][:1] != b":"])
    except BadTrailer as e:
        raise UpstreamProtocolError(str(e)) from None


def request_trailers(trailers) -> list:
    """The request's trailer fields as HTTP/2 takes them: lower-case
    names, those that may be sent only (L{sendable_trailers})."""
    return [(name.lower(), value) for name, value in sendable_trailers(trailers)]
