"""
Step 1: which route serves the request.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.web.client import URI
from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep
from keda_proxy.state._model import RequestFacts
from keda_proxy.state._routing import normalize_host
from keda_proxy.steps._responses import write_error
from keda_proxy.wire._headers import canonical_name

_new_tuple = tuple.__new__


def request_facts(downstream) -> Optional[RequestFacts]:
    """What routing sees of a request, or None if it is malformed (no Host
    on HTTP/1.1, several Host headers)."""
    target = downstream.target
    path = downstream.path
    headers = downstream.headers
    hosts = headers.get(b"Host", ())
    if target[:1] != b"/" and (target[:7].lower() == b"http://"
                               or target[:8].lower() == b"https://"):
        # absolute-form (RFC 9112 §3.2.2): its authority replaces Host
        authority, origin = absolute_form(target)
        hosts = [authority]
        path = origin.split(b"?", 1)[0]
    elif len(hosts) > 1 or (not hosts and downstream.version == b"HTTP/1.1"):
        return None
    raw_host = hosts[0].decode("latin-1") if hosts else ""

    def header_values(name: str):
        raw = headers.get(canonical_name(name.encode("latin-1")), ())
        return tuple(v.decode("latin-1") for v in raw)

    # tuple.__new__ directly: a named tuple's own constructor is a Python
    # function, a frame per request (fields in RequestFacts' order)
    return _new_tuple(RequestFacts, (normalize_host(raw_host), path.decode("latin-1"),
                                     downstream.method.decode("latin-1"), header_values))


def absolute_form(target: bytes) -> Tuple[bytes, bytes]:
    """An absolute-form target's authority (without any userinfo) and its
    origin-form path and query."""
    parsed = URI.fromBytes(target)
    origin = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    return parsed.netloc.rpartition(b"@")[2], origin


@implementer(IRequestStep)
class RouteRequest:
    """Find the route (routing plugins, then the table): 404 without one,
    400 for a request routing cannot read, 405 for CONNECT."""

    def __init__(self, router, store, next):
        self.router = router
        self.store = store
        self.next = next

    def handle(self, context) -> None:
        downstream = context.downstream
        if downstream.method == b"CONNECT":
            write_error(downstream, 405)
            return
        facts = context.facts = request_facts(downstream)
        if facts is None:
            write_error(downstream, 400)
            return
        route = self.router.route(facts)
        if route is None:
            write_error(downstream, 404)
            return
        context.route = route
        context.snapshot = self.store.current
        self.next.handle(context)
