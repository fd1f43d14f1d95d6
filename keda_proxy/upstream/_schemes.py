"""
The schemes of the pool keys (``(scheme, host, port, server_name)``):
what a connection to the upstream speaks, and so how it is dialled.

 - C{http}: HTTP/1.1 in clear text;
 - C{h2c}: HTTP/2 in clear text, with prior knowledge, for a Service port
   whose C{appProtocol} is C{kubernetes.io/h2c}, as Go's interceptor does;
 - C{https}: TLS offering ``h2`` and ``http/1.1``; ALPN decides;
 - C{https+http/1.1}: TLS offering ``http/1.1`` alone.

A request that asks for an upgrade (a WebSocket) stays on HTTP/1.1: it
goes to the key L{http1_key} gives.
"""

from __future__ import annotations

HTTP = b"http"
H2C = b"h2c"
HTTPS = b"https"
HTTPS_HTTP1 = b"https+http/1.1"

#: the Service port C{appProtocol} that asks for h2c
H2C_APP_PROTOCOL = "kubernetes.io/h2c"

_HTTP1 = {H2C: HTTP, HTTPS: HTTPS_HTTP1}


def http1_key(key: tuple) -> tuple:
    """The pool key for the same upstream over HTTP/1.1 only."""
    scheme = _HTTP1.get(key[0])
    return key if scheme is None else (scheme,) + key[1:]
