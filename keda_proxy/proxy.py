"""
The ReverseProxy resource and the steps every request goes through.

1. route (plugins, then the routing table)            -> 404
2. static route or placeholder                       -> served here
3. count (``/queue``)
4. wait for a ready endpoint, with fallback          -> 504
5. select an endpoint (a pod, or the Service)
6. forward over the pooled client, streaming back    -> 502 / 504

Each request's state lives in one L{Exchange}; the L{Pipeline} holds the
long-lived components, all injected.
"""

from __future__ import annotations

import random
from typing import Optional, Tuple

from attrs import define, field
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http
from twisted.web.client import (
    URI,
    FileBodyProducer,
    PotentialDataLoss,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from keda_proxy.headers import COLD_START_HEADER, end_to_end, upstream_request_headers
from keda_proxy.interfaces import IEndpointSelector, IRouter
from keda_proxy.model import MODE_ALWAYS, RequestFacts, Route, ServiceRef
from keda_proxy.readiness import ReadinessGate
from keda_proxy.responses import write_error, write_static
from keda_proxy.routing import normalize_host, rule_matches
from keda_proxy.store import Snapshot, StateStore
from keda_proxy.upstream import CONNECT_ERRORS, ip_version

log = Logger()

#: Go's default readiness timeout when a fallback exists and none is set.
DEFAULT_FALLBACK_READINESS = 30.0

_BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})


@implementer(IEndpointSelector)
class RandomSelector:
    """Pick a ready pod uniformly at random, as the Go interceptor does."""

    def __init__(self, rng: Optional[random.Random] = None):
        self._choice = (rng or random.Random()).choice

    def select(self, candidates, request):
        return self._choice(candidates)


@define(frozen=True)
class ProxySettings:
    """The slice of L{keda_proxy.config.Config} the request path needs."""

    request_timeout: float = 0.0
    response_header_timeout: float = 300.0
    readiness_timeout: float = 0.0
    enable_cold_start_header: bool = True
    direct_pod_routing: bool = False
    upstream_tls: bool = False


class RouteError(Exception):
    """A route whose target cannot be turned into an address (500)."""


def request_facts(request) -> Optional[RequestFacts]:
    """What routing sees of a twisted.web request, or None if the request
    is malformed (no Host on HTTP/1.1, several Host headers)."""
    uri = request.uri
    path = request.path
    hosts = request.requestHeaders.getRawHeaders(b"host", ())
    if uri[:7].lower() == b"http://" or uri[:8].lower() == b"https://":
        # absolute-form (RFC 9112 §3.2.2): its authority replaces Host
        parsed = URI.fromBytes(uri)
        hosts = [parsed.netloc]
        path = parsed.path or b"/"
    elif len(hosts) > 1 or (not hosts and request.clientproto == b"HTTP/1.1"):
        return None
    raw_host = hosts[0].decode("latin-1") if hosts else ""
    headers = request.requestHeaders

    def header_values(name: str):
        raw = headers.getRawHeaders(name.encode("latin-1"), ())
        return tuple(v.decode("latin-1") for v in raw)

    return RequestFacts(
        host=normalize_host(raw_host),
        path=path.decode("latin-1"),
        method=request.method.decode("latin-1"),
        header_values=header_values,
    )


def join_host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed (``[fd00::1]:8080``)."""
    if ip_version(host) == 6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def resolve_port(ref: ServiceRef, namespace: str, snapshot: Snapshot) -> Tuple[int, str]:
    """The Service port number and port name for a target.

    ``port`` is used as given (its name is looked up for direct-pod routing,
    "" when the Service is unknown); ``portName`` must resolve through the
    Service.
    """
    svc = snapshot.services.get(f"{namespace}/{ref.name}")
    if ref.port:
        sp = svc.port_by_number(ref.port) if svc is not None else None
        return ref.port, (sp.name if sp is not None else "")
    if not ref.port_name:
        raise RouteError('must specify either "port" or "portName"')
    if svc is None:
        raise RouteError(f"Service {namespace}/{ref.name} not found")
    sp = svc.port_by_name(ref.port_name)
    if sp is None:
        raise RouteError(f"port name {ref.port_name!r} not found in Service {namespace}/{ref.name}")
    return sp.port, sp.name


@define
class Target:
    """Where one attempt goes: the pool URI, and the TLS name to verify."""

    uri: bytes
    server_name: str
    port_name: str = ""


@define
class Pipeline:
    """The long-lived parts of the request path."""

    clock: object
    store: StateStore
    router: IRouter
    counter: object
    gate: ReadinessGate
    agent: object
    cooperator: object
    settings: ProxySettings = ProxySettings()
    selector: IEndpointSelector = field(factory=RandomSelector)
    metrics: object = None

    def handle(self, request) -> None:
        route = None
        facts = None if request.method == b"CONNECT" else request_facts(request)
        if facts is not None:
            route = self.router.route(facts)
        if self.metrics is not None:
            self.metrics.observe(request, self.clock.seconds(), route)
        if request.method == b"CONNECT":
            write_error(request, http.NOT_ALLOWED)
        elif facts is None:
            write_error(request, http.BAD_REQUEST)
        elif route is None:
            write_error(request, http.NOT_FOUND)
        else:
            Exchange(self, request, route, facts).start()


@define
class Exchange:
    """One request's journey through the pipeline."""

    p: Pipeline
    request: object
    route: Route
    facts: RequestFacts
    snapshot: Snapshot = None
    _gone: bool = False
    _wait: object = None
    _upstream: object = None
    _timers: list = field(factory=list)
    _timed_out: bool = False
    _streaming: bool = False
    _ticket: object = None
    _body_transport: object = None

    def start(self) -> None:
        p = self.p
        self.snapshot = p.store.current
        self.request.notifyFinish().addBoth(self._finished)
        static = self._matching_static_route()
        ready = p.gate.is_ready(self.route.service_key)
        if static is not None:
            if static.mode == MODE_ALWAYS or not ready:
                write_static(self.request, self.route, static.response, self.snapshot,
                             self.facts.path, http.OK)
                return
            # WhenUnavailable and available: straight upstream, uncounted.
            self._forward_primary(cold_start=None)
            return
        self._ticket = p.counter.enter(self.route.key)
        placeholder = self.route.placeholder
        if placeholder is not None and not ready:
            write_static(self.request, self.route, placeholder, self.snapshot,
                         self.facts.path, http.SERVICE_UNAVAILABLE)
            return
        deadline = self.route.timeouts.request
        if deadline is None:
            deadline = p.settings.request_timeout
        if deadline > 0:
            self._later(deadline, self._request_deadline)
        self._await_ready()

    def _matching_static_route(self):
        for static in self.route.static_routes:
            for rule in static.rules:
                if rule_matches(rule, self.facts):
                    return static
        return None

    # -- step 4: readiness ---------------------------------------------------

    def _await_ready(self) -> None:
        timeout = self.route.timeouts.readiness
        if timeout is None:
            timeout = self.p.settings.readiness_timeout
        if self.route.fallback is not None and timeout == 0:
            timeout = DEFAULT_FALLBACK_READINESS
        d = self._wait = self.p.gate.wait(self.route.service_key)
        if d.called:
            self._wait = None
            d.addCallback(self._ready)
            return
        if timeout > 0:
            d.addBoth(_disarm, self._later(timeout, d.cancel))
        d.addCallbacks(self._ready, self._not_ready)

    def _ready(self, cold_start: bool) -> None:
        self._wait = None
        if self._gone:
            return
        self.snapshot = self.p.store.current
        self._forward_primary(cold_start)

    def _not_ready(self, f) -> None:
        self._wait = None
        f.trap(CancelledError)
        if self._gone or self.request.finished:
            return
        if self.route.fallback is None or self._timed_out:
            log.info("{route}: backend not ready in time", route=self.route.key)
            write_error(self.request, http.GATEWAY_TIMEOUT)
            return
        try:
            target = self._service_target(self.route.fallback)
        except RouteError as e:
            self._route_error(e)
            return
        self._send(target)

    # -- step 5: endpoint selection ----------------------------------------

    def _forward_primary(self, cold_start) -> None:
        if self.request.finished or self._gone:
            return
        try:
            target = self._service_target(self.route.target)
        except RouteError as e:
            self._route_error(e)
            return
        if cold_start is not None and self.p.settings.enable_cold_start_header:
            self.request.responseHeaders.setRawHeaders(
                COLD_START_HEADER, [b"true" if cold_start else b"false"])
        if self.p.settings.direct_pod_routing:
            target = self._pod_target(target)
        self._send(target)

    def _service_target(self, ref: ServiceRef) -> Target:
        port, port_name = resolve_port(ref, self.route.namespace, self.snapshot)
        host = f"{ref.name}.{self.route.namespace}"
        scheme = "https" if self.p.settings.upstream_tls else "http"
        uri = f"{scheme}://{host}:{port}".encode("ascii")
        return Target(uri=uri, server_name=host, port_name=port_name)

    def _pod_target(self, target: Target) -> Target:
        eps = self.snapshot.endpoints_for(self.route.service_key)
        candidates = eps.candidates.get(target.port_name)
        if not candidates:
            log.debug("{route}: no pod for port {port!r}; using the Service address",
                      route=self.route.key, port=target.port_name)
            return target
        ip, port = self.p.selector.select(candidates, self.facts)
        scheme = "https" if self.p.settings.upstream_tls else "http"
        uri = f"{scheme}://{join_host_port(ip, port)}".encode("ascii")
        return Target(uri=uri, server_name=target.server_name, port_name=target.port_name)

    def _route_error(self, e: Exception) -> None:
        log.error("{route}: {error}", route=self.route.key, error=str(e))
        write_error(self.request, http.INTERNAL_SERVER_ERROR)

    # -- step 6: forward ------------------------------------------------------

    def _send(self, target: Target) -> None:
        req = self.request
        scheme = b"https" if req.isSecure() else b"http"
        headers = upstream_request_headers(req.requestHeaders, self._client_ip(), scheme)
        path = req.uri if req.uri.startswith(b"/") else _origin_form(req.uri)
        body = self._body_producer()
        d = self._upstream = self.p.agent.request(req.method, target.uri + path, headers, body)
        timeout = self.route.timeouts.response_header
        if timeout is None:
            timeout = self.p.settings.response_header_timeout
        if timeout > 0:
            d.addBoth(_disarm, self._later(timeout, self._response_header_timeout))
        d.addCallbacks(self._got_response, self._upstream_failed, errbackArgs=(target,))

    def _body_producer(self):
        content = self.request.content
        if content is None:
            return None
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size == 0 and self.request.method in _BODYLESS_METHODS and \
                not self.request.requestHeaders.hasHeader(b"content-length"):
            return None
        return FileBodyProducer(content, cooperator=self.p.cooperator)

    def _client_ip(self) -> str:
        addr = self.request.getClientAddress()
        return getattr(addr, "host", None) or "unknown"

    def _response_header_timeout(self) -> None:
        self._timed_out = True
        if self._upstream is not None:
            self._upstream.cancel()

    def _got_response(self, response) -> None:
        self._upstream = None
        req = self.request
        if self._gone:
            response.deliverBody(_Discard())
            return
        req.setResponseCode(response.code, response.phrase)
        out = req.responseHeaders
        if not response.headers.hasHeader(b"server"):
            out.removeHeader(b"server")
        for name, values in end_to_end(response.headers):
            out.setRawHeaders(name, values)
        self._streaming = True
        response.deliverBody(_Relay(self))

    def _upstream_failed(self, f, target: Target) -> None:
        self._upstream = None
        if self._gone or self.request.finished:
            return
        if self._timed_out or (f.check(ResponseNeverReceived) and _cancelled(f)):
            log.info("{route}: upstream {uri} timed out", route=self.route.key,
                     uri=target.uri.decode())
            write_error(self.request, http.GATEWAY_TIMEOUT)
            return
        if f.check(*CONNECT_ERRORS):
            log.info("{route}: cannot reach {uri}: {error}", route=self.route.key,
                     uri=target.uri.decode(), error=f.getErrorMessage())
        else:
            log.failure("{route}: upstream {uri} failed", f, route=self.route.key,
                        uri=target.uri.decode())
        write_error(self.request, http.BAD_GATEWAY)

    # -- deadlines and endings ----------------------------------------------

    def _later(self, delay: float, fn):
        timer = self.p.clock.callLater(delay, fn)
        self._timers.append(timer)
        return timer

    def _request_deadline(self) -> None:
        self._timed_out = True
        if self.request.finished or self._gone:
            return
        if self._streaming:
            # Headers are out: the only honest signal left is a cut.
            self.request.channel.transport.abortConnection()
            return
        if self._wait is not None:
            self._wait.cancel()
        elif self._upstream is not None:
            self._upstream.cancel()
        else:
            write_error(self.request, http.GATEWAY_TIMEOUT)

    def _finished(self, result) -> None:
        """The client got its response, or went away; either way, once."""
        if result is not None:
            self._gone = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._ticket is not None:
            self._ticket.release()
        if self._gone:
            if self._wait is not None:
                self._wait.cancel()
            if self._upstream is not None:
                self._upstream.cancel()
            if self._body_transport is not None:
                self._body_transport.stopProducing()


def _disarm(result, timer):
    """Cancel C{timer} once the Deferred it guards has fired."""
    if timer.active():
        timer.cancel()
    return result


def _origin_form(uri: bytes) -> bytes:
    parsed = URI.fromBytes(uri)
    path = parsed.path or b"/"
    return path + (b"?" + parsed.query if parsed.query else b"")


def _cancelled(f) -> bool:
    return any(r.check(CancelledError) for r in getattr(f.value, "reasons", ()))


class _Relay(Protocol):
    """Streams an upstream body to the client as it arrives, pausing the
    upstream when the client's transport is full."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange

    def connectionMade(self):
        ex = self.exchange
        ex._body_transport = self.transport
        if not ex.request.finished and not ex._gone:
            ex.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        ex = self.exchange
        if not ex._gone and not ex.request.finished:
            ex.request.write(data)

    def connectionLost(self, reason) -> None:
        ex = self.exchange
        req = ex.request
        ex._body_transport = None
        if ex._gone or req.finished:
            return
        req.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            req.finish()
        else:
            log.info("{route}: upstream body broke off: {error}",
                     route=ex.route.key, error=reason.getErrorMessage())
            req.channel.transport.abortConnection()


class _Discard(Protocol):
    def dataReceived(self, data):
        pass


class ReverseProxy(Resource):
    """The proxy site's root: every path goes to the L{Pipeline}."""

    isLeaf = True

    def __init__(self, pipeline: Pipeline):
        super().__init__()
        self.pipeline = pipeline

    def render(self, request):
        self.pipeline.handle(request)
        return NOT_DONE_YET
