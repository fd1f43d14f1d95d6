"""
Header rules for a forwarding proxy (RFC 9110 §7.6.1, and what Go's
``httputil.ReverseProxy`` does): hop-by-hop headers stop here, and the
``X-Forwarded-*`` family records where the request came from.
"""

from __future__ import annotations

from typing import FrozenSet

from twisted.web.http_headers import Headers, _nameEncoder

from keda_proxy.state._memo import remember

HOP_BY_HOP: FrozenSet[bytes] = frozenset({
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
})

COLD_START_HEADER = b"X-KEDA-HTTP-Cold-Start"
#: the same, as Twisted's Headers store keys it
COLD_START_KEY = _nameEncoder.encode(COLD_START_HEADER)


def connection_tokens(headers: Headers) -> FrozenSet[bytes]:
    """Header names listed in ``Connection``, which are hop-by-hop too.

    (On the request path, headers are read straight from the Headers store
    by their canonical names: C{getRawHeaders} would encode the name again.)
    """
    values = headers._rawHeaders.get(b"Connection")
    if not values:  # most requests
        return _NONE
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def upgrade_requested(headers: Headers, tokens: FrozenSet[bytes] = None):
    """The protocol a request asks to switch to (its ``Upgrade`` values,
    when ``Connection`` lists ``upgrade``), or None."""
    if tokens is None:
        tokens = connection_tokens(headers)
    if b"upgrade" not in tokens:
        return None
    values = headers.getRawHeaders(b"upgrade")
    return b", ".join(values) if values else None


def request_head(method: bytes, target: bytes, incoming: Headers, client_ip: str,
                 scheme: bytes, body_length, authority: bytes = None,
                 traceparent: bytes = None) -> bytes:
    """The upstream request head, as bytes, in one pass over the headers.

    Host is kept as the client sent it, or is C{authority}, that of an
    absolute-form target, which replaces it (RFC 9112 §3.2.2).  Hop-by-hop
    headers go, and so do those ``Connection`` names, except the ones a
    proxy keeps whatever a client says (L{KEPT_END_TO_END}).
    ``X-Forwarded-For`` gets the client
    address appended; ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` are
    kept when the client (an outer proxy) set them, and set otherwise.
    ``TE: trailers`` survives, as in Go.  With tracing on, C{traceparent}
    replaces the client's (L{keda_proxy.ops._tracing}).  C{body_length} is the body's
    length, C{None} for a chunked body, or C{0} for none; the framing
    headers are ours, never the client's.
    """
    tokens = connection_tokens(incoming)
    upgrade = upgrade_requested(incoming, tokens) if tokens else None
    drop = (HOP_BY_HOP | (tokens - KEPT_END_TO_END) | _FRAMING) if tokens else _DROP
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if authority is not None:
        parts += (b"Host: ", authority, b"\r\n")
        drop = drop | _HOST
    if traceparent is not None:
        parts += (b"traceparent: ", traceparent, b"\r\n")
        drop = _DROP_TRACED if drop is _DROP else drop | _TRACEPARENT
    xff = xfh = xfp = None
    te_trailers = False
    for name, values in incoming._rawHeaders.items():  # not the generator
        lname = name.lower()
        if lname in drop:
            if lname == b"te":
                te_trailers = any(v.strip().lower() == b"trailers" for v in values)
            continue
        if lname == b"x-forwarded-for":
            xff = values
            continue
        if lname == b"x-forwarded-host":
            xfh = True
        elif lname == b"x-forwarded-proto":
            xfp = True
        for v in values:
            parts += (name, b": ", v, b"\r\n")
    ip = client_ip.encode("ascii")
    parts += (b"X-Forwarded-For: ", b", ".join(xff + [ip]) if xff else ip, b"\r\n")
    if xfh is None:
        host = [authority] if authority is not None else incoming._rawHeaders.get(b"Host")
        if host:
            parts += (b"X-Forwarded-Host: ", host[0], b"\r\n")
    if xfp is None:
        parts += (b"X-Forwarded-Proto: ", scheme, b"\r\n")
    if te_trailers:
        parts.append(b"TE: trailers\r\n")
    if upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    if body_length is None:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif body_length:
        parts.append(b"Content-Length: %d\r\n" % body_length)
    parts.append(b"\r\n")
    return b"".join(parts)


#: header name as sent -> Twisted's canonical name, for names seen before;
#: the request parser reads it directly (see L{keda_proxy.downstream._http1})
CANONICAL_NAMES: dict = {}


def canonical_name(name: bytes) -> bytes:
    """Twisted's canonical form of a header name, worked out once per name
    and remembered (encoding it on every request and response costs a call
    per header).  Raises C{InvalidHeaderName} for a name that is not a
    token."""
    key = CANONICAL_NAMES.get(name)
    if key is None:
        key = remember(CANONICAL_NAMES, name, _nameEncoder.encode(name))
    return key


#: L{HOP_BY_HOP} in canonical form: any spelling of those names maps here
_HOP_KEYS = frozenset(_nameEncoder.encode(n) for n in HOP_BY_HOP)


#: end-to-end headers that a ``Connection`` listing never removes: the
#: upstream needs Host to pick a site, and a client must not erase the
#: forwarding chain that the upstream may use to tell who is calling
KEPT_END_TO_END: FrozenSet[bytes] = frozenset({
    b"host", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded",
})
_HOST = frozenset({b"host"})
_TRACEPARENT = frozenset({b"traceparent"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NONE: FrozenSet[bytes] = frozenset()
_DROP = HOP_BY_HOP | _FRAMING
_DROP_TRACED = _DROP | _TRACEPARENT
