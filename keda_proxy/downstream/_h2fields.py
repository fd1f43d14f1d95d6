"""
HTTP/2 header fields, as the proxy's HTTP/2 server reads and writes them:
a request's HEADERS checked by the project's own rules (RFC 9113
§8.2-8.3) and turned into the canonical dict every exchange carries, and
an upstream's response head turned back into lowercase fields.
"""

from __future__ import annotations

import re

from twisted.web.http import datetimeToString

from keda_proxy.wire._headers import (
    H2_CONNECTION_SPECIFIC,
    InvalidHeaderName,
    canonical_name,
    sendable_trailers,
)
from keda_proxy.wire._memo import remember

__all__ = [
    "MalformedRequest", "http_date", "is_grpc", "lower_fields", "lower_trailers",
    "request_fields", "request_trailers", "response_fields",
]

_date_cache = [None, b""]


def http_date(now: float) -> bytes:
    """The C{date} value for now, formatted once a second."""
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[1] = datetimeToString(second)
        _date_cache[0] = second
    return _date_cache[1]


_FIELDS: dict = {}


def response_fields(block: bytes) -> tuple:
    """The header lines of an upstream response head (canonical names,
    CRLF after each) as HTTP/2 fields: lowercase names, and nothing that
    is connection-specific.  Remembered per block: most repeat."""
    fields = _FIELDS.get(block)
    if fields is None:
        out = []
        for line in block.split(b"\r\n"):
            if not line:
                continue
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name not in H2_CONNECTION_SPECIFIC:
                out.append((name, value.strip(b" \t")))
        fields = remember(_FIELDS, block, tuple(out))
    return fields


def lower_fields(fields) -> list:
    return [(name.lower(), value) for name, value in fields
            if name.lower() not in H2_CONNECTION_SPECIFIC]


class MalformedRequest(Exception):
    """A request HTTP/2 calls malformed (RFC 9113 §8.1.1): its stream is
    reset with PROTOCOL_ERROR, the connection goes on."""


#: what may follow the method and path into an HTTP/1.1 request line, or
#: the authority into Host: visible ASCII, no space
_VISIBLE = re.compile(rb"[\x21-\x7e]+\Z")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: what no field value may hold (RFC 9113 §8.2.1)
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme"})
#: lowercase field names already checked, to their canonical form
_NAMES: dict = {}


def _field_name(name: bytes) -> bytes:
    key = _NAMES.get(name)
    if key is None:
        if name.lower() != name or name in H2_CONNECTION_SPECIFIC:
            raise MalformedRequest(name)
        try:
            key = remember(_NAMES, name, canonical_name(name))
        except InvalidHeaderName:
            raise MalformedRequest(name) from None
    return key


def request_fields(fields):
    """A request's decoded HEADERS, checked as RFC 9113 §8.2-8.3 asks (the
    C{h2} library's own checks are off: they took 11 of the 43 us h2
    spent taking in a request, and treat a malformed request as a
    connection error).

    @return: C{(method, path, authority, headers, cookies)}: C{headers}
        maps canonical names to their values, as HTTP/1.1 requests do.
    @raise MalformedRequest: uppercase or connection-specific names, a TE
        other than C{trailers}, NUL/CR/LF or surrounding whitespace in a
        value, unknown, repeated or late pseudo-fields, or a method, path
        or authority that could not go into an HTTP/1.1 request.
    """
    pseudo = {}
    headers: dict = {}
    cookies = []
    search = _BAD_VALUE.search
    for name, value in fields:
        if value and search(value) is not None:
            raise MalformedRequest(name)
        if name[:1] == b":":
            if headers or cookies or name in pseudo or name not in _PSEUDO:
                raise MalformedRequest(name)
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            if name == b"te" and value.lower() != b"trailers":
                raise MalformedRequest(name)
            key = _field_name(name)
            values = headers.get(key)
            if values is None:
                headers[key] = [value]
            else:
                values.append(value)
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    if method is None or _TOKEN.match(method) is None:
        raise MalformedRequest(b":method")
    if method != b"CONNECT" and (path is None or b":scheme" not in pseudo
                                 or _VISIBLE.match(path) is None):
        raise MalformedRequest(b":path")
    if authority is not None and _VISIBLE.match(authority) is None:
        raise MalformedRequest(b":authority")
    return method, path, authority, headers, cookies


def request_trailers(fields) -> list:
    """A request's trailers, checked as its headers are (no pseudo-fields
    at all), as C{(canonical name, value)} pairs."""
    out = []
    search = _BAD_VALUE.search
    for name, value in fields:
        if name[:1] == b":" or (value and search(value) is not None):
            raise MalformedRequest(name)
        out.append((_field_name(name), value))
    return out


def is_grpc(headers: dict) -> bool:
    """Whether a request is a gRPC call (C{application/grpc}, with or
    without a C{+format} suffix)."""
    content_type = headers.get(b"Content-Type")
    return bool(content_type) and content_type[0][:16].lower() == b"application/grpc"


def lower_trailers(trailers) -> list:
    """Response trailers as HTTP/2 fields: lowercase names, those that may
    be sent only (L{sendable_trailers})."""
    return [(name.lower(), value) for name, value in sendable_trailers(trailers)]
