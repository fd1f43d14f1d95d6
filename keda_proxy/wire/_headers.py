"""
Header rules for a forwarding proxy (RFC 9110 §7.6.1, and what Go's
``httputil.ReverseProxy`` does): hop-by-hop headers stop here, and the
``X-Forwarded-*`` family records where the request came from.
"""

from __future__ import annotations

from typing import FrozenSet, Optional

from keda_proxy.wire._memo import remember

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


class InvalidHeaderName(ValueError):
    """A header name that is not an RFC 9110 token."""


#: RFC 9110 token characters
TOKEN_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
               b"!#$%&'*+-.^_`|~")
#: names whose usual spelling is not plain Header-Case (as twisted.web spells them)
_CASE_MAPPINGS = {
    b"Content-Md5": b"Content-MD5", b"Dnt": b"DNT", b"Etag": b"ETag", b"P3p": b"P3P",
    b"Te": b"TE", b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}


def _canonical(name: bytes) -> bytes:
    if not name or name.translate(None, TOKEN_BYTES):
        raise InvalidHeaderName(name)
    result = b"-".join([word.capitalize() for word in name.split(b"-")])
    return _CASE_MAPPINGS.get(result, result)


#: the cold-start header in canonical form, as response_headers keys it
COLD_START_KEY = _canonical(COLD_START_HEADER)


def connection_tokens(headers: dict) -> FrozenSet[bytes]:
    """Header names listed in ``Connection``, which are hop-by-hop too.

    @param headers: a request's fields, canonical name -> values.
    """
    values = headers.get(b"Connection")
    if not values:  # most requests
        return _NONE
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def upgrade_requested(headers: dict, tokens: FrozenSet[bytes] = None):
    """The protocol a request asks to switch to (its ``Upgrade`` values,
    when ``Connection`` lists ``upgrade``), or None."""
    if tokens is None:
        tokens = connection_tokens(headers)
    if b"upgrade" not in tokens:
        return None
    values = headers.get(b"Upgrade")
    return b", ".join(values) if values else None


def request_head(method: bytes, target: bytes, incoming: dict, client_ip: str,
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
    for name, values in incoming.items():
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
        host = [authority] if authority is not None else incoming.get(b"Host")
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


#: header name as sent -> its canonical name, for names seen before;
#: the request parser reads it directly (see L{keda_proxy.downstream._http1})
CANONICAL_NAMES: dict = {}


def canonical_name(name: bytes) -> bytes:
    """The canonical form of a header name (Header-Case, as twisted.web
    spells it), worked out once per name and remembered.  Raises
    L{InvalidHeaderName} for a name that is not a token."""
    key = CANONICAL_NAMES.get(name)
    if key is None:
        key = remember(CANONICAL_NAMES, name, _canonical(name))
    return key


#: L{HOP_BY_HOP} in canonical form: any spelling of those names maps here
_HOP_KEYS = frozenset(_canonical(n) for n in HOP_BY_HOP)


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


#: fields HTTP/2 has no place for (RFC 9113 §8.2.2), lowercase as HTTP/2
#: writes names: neither of the proxy's HTTP/2 sides sends them, and a
#: request that carries one is malformed
H2_CONNECTION_SPECIFIC: FrozenSet[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})


#: fields that must not travel as trailers (RFC 9110 §6.5.1): framing,
#: routing, authentication and content description, and the hop-by-hop
#: ones; dropped from trailers in both directions
NOT_TRAILERS: FrozenSet[bytes] = _HOP_KEYS | frozenset(canonical_name(name) for name in (
    b"content-length", b"transfer-encoding", b"trailer", b"host",
    b"content-encoding", b"content-type", b"content-range",
    b"authorization", b"www-authenticate",
))


class BadTrailer(ValueError):
    """A trailer line that breaks the head's rules."""


def trailer_fields(lines) -> Optional[list]:
    """Chunked trailer lines (as L{keda_proxy.wire._framing.ChunkedDecoder}
    keeps them) as C{(canonical name, value)} pairs, or None when none is
    left (L{trailer_pairs}); a line without a colon is a L{BadTrailer}
    too."""
    pairs = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadTrailer(f"bad trailer line {line[:80]!r}")
        pairs.append((name, value.strip(b" \t")))
    return trailer_pairs(pairs)


def trailer_pairs(pairs) -> Optional[list]:
    """Trailer fields, as C{(name, value)} byte pairs from any protocol, as
    C{(canonical name, value)} pairs, or None when none is left.

    The head's rules: a CR, LF or NUL, or a name that is not a token,
    raises L{BadTrailer}, and the message it ends is refused, as Go's
    reader refuses it.  Well-formed fields that must not be trailers
    (L{NOT_TRAILERS}) are dropped.
    """
    fields = []
    for name, value in pairs:
        if 0 in value or 10 in value or 13 in value or 0 in name:
            raise BadTrailer(f"CR, LF or NUL in the trailer {name[:80]!r}")
        try:
            key = canonical_name(name)
        except InvalidHeaderName:
            raise BadTrailer(f"bad trailer name {name[:80]!r}") from None
        if key not in NOT_TRAILERS:
            fields.append((key, value))
    return fields or None


def trailer_names(announced: bytes) -> bytes:
    """A ``Trailer`` value (every line, joined by commas) to announce
    again: canonical names, once each, those that may be trailers only;
    what is not a token is left out."""
    names = []
    for token in announced.split(b","):
        try:
            key = canonical_name(token.strip(b" \t"))
        except InvalidHeaderName:
            continue
        if key not in NOT_TRAILERS and key not in names:
            names.append(key)
    return b", ".join(names)


def sendable_trailers(fields) -> list:
    """Trailer fields to send on, from any side, as C{(canonical name,
    value)} pairs: those that may be trailers (L{NOT_TRAILERS}), with a
    token for a name and a value without CR, LF or NUL; the rest are
    dropped, whatever the side they came from let through."""
    out = []
    for name, value in fields or ():
        try:
            key = canonical_name(name)
        except InvalidHeaderName:
            continue
        if key in NOT_TRAILERS or 0 in value or 10 in value or 13 in value:
            continue
        out.append((key, value))
    return out
