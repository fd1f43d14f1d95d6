"""
Header rules for a forwarding proxy (RFC 9110 §7.6.1, and what Go's
``httputil.ReverseProxy`` does): hop-by-hop headers stop here, and the
``X-Forwarded-*`` family records where the request came from.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, List, Tuple

from twisted.web.http_headers import Headers

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


def connection_tokens(headers: Headers) -> FrozenSet[bytes]:
    """Header names listed in ``Connection``, which are hop-by-hop too."""
    tokens = set()
    for value in headers.getRawHeaders(b"connection", ()):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def end_to_end(headers: Headers) -> Iterable[Tuple[bytes, List[bytes]]]:
    """The headers a proxy passes on, in order, values as received."""
    drop = HOP_BY_HOP | connection_tokens(headers)
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            yield name, values


def upstream_request_headers(incoming: Headers, client_ip: str, scheme: bytes) -> Headers:
    """Headers for the upstream request.

    Host is kept as the client sent it.  ``X-Forwarded-For`` gets the client
    address appended; ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` are
    kept when the client (an outer proxy) set them, and set otherwise.
    ``TE: trailers`` survives, as in Go, since it is a request for
    end-to-end trailers.
    """
    out = Headers()
    for name, values in end_to_end(incoming):
        if name.lower() != b"content-length":  # the body producer sets it
            out.setRawHeaders(name, values)
    if b"trailers" in [v.strip().lower() for v in incoming.getRawHeaders(b"te", ())]:
        out.setRawHeaders(b"te", [b"trailers"])
    prior = incoming.getRawHeaders(b"x-forwarded-for")
    ip = client_ip.encode("ascii")
    out.setRawHeaders(b"x-forwarded-for", [b", ".join(prior + [ip]) if prior else ip])
    if not incoming.hasHeader(b"x-forwarded-host"):
        host = incoming.getRawHeaders(b"host", [b""])[0]
        if host:
            out.setRawHeaders(b"x-forwarded-host", [host])
    if not incoming.hasHeader(b"x-forwarded-proto"):
        out.setRawHeaders(b"x-forwarded-proto", [scheme])
    return out

