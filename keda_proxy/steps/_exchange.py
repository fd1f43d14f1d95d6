"""
The ReverseProxy resource and the steps every request goes through.

1. route (plugins, then the routing table)            -> 404
2. static route                                      -> served here
3. count (``/queue``), then, with no ready endpoint, the placeholder or
   the cold-start pending limit                      -> served here / 503
4. wait for a ready endpoint, with fallback          -> 504
5. select an endpoint (a pod, or the Service)
6. forward over the pooled client, streaming back    -> 502 / 504

Each request's state lives in one L{Exchange}; the L{Pipeline} holds the
long-lived components, all injected.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attrs
from attrs import define, field
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.web import http
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from keda_proxy.interfaces import IHeldRequest, IRouter
from keda_proxy.ops._zaplog import log_request
from keda_proxy.state._endpoints import join_host_port
from keda_proxy.state._model import (
    MODE_ALWAYS,
    OVERFLOW_PLACEHOLDER,
    RequestFacts,
    Route,
    ServiceRef,
)
from keda_proxy.state._routing import normalize_host, rule_matches
from keda_proxy.state._store import Snapshot, StateStore
from keda_proxy.steps._readiness import ReadinessGate
from keda_proxy.steps._responses import TOO_MANY_PENDING, write_error, write_static
from keda_proxy.steps._tunnel import Tunnel
from keda_proxy.upstream._dial import CONNECT_ERRORS, MAX_RETRY_DURATION
from keda_proxy.upstream._http1client import IResponseSink, UpstreamProtocolError
from keda_proxy.wire._headers import COLD_START_KEY, request_head, upgrade_requested

log = Logger()

#: Go's default readiness timeout when a fallback exists and none is set.
DEFAULT_FALLBACK_READINESS = 30.0
#: "pick a pod now" (see Exchange._forward_primary)
_PICK = object()


@define(frozen=True)
class ProxySettings:
    """The slice of L{keda_proxy.ops._config.Config} the request path needs."""

    request_timeout: float = 0.0
    response_header_timeout: float = 300.0
    readiness_timeout: float = 0.0
    enable_cold_start_header: bool = True
    direct_pod_routing: bool = True
    #: ``KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS``: requests held per route
    #: (in this interceptor) while its target has no ready endpoint; 0: no limit
    cold_start_max_pending_requests: int = 0
    upstream_tls: bool = False
    #: how long to keep re-dialling a Service address with no request deadline
    dial_budget: float = MAX_RETRY_DURATION


class RouteError(Exception):
    """A route whose target cannot be turned into an address (500)."""


_new_tuple = tuple.__new__


def request_facts(request) -> Optional[RequestFacts]:
    """What routing sees of a twisted.web request, or None if the request
    is malformed (no Host on HTTP/1.1, several Host headers)."""
    uri = request.uri
    path = request.path
    hosts = request.requestHeaders._rawHeaders.get(b"Host", ())
    if uri[:1] != b"/" and (uri[:7].lower() == b"http://" or uri[:8].lower() == b"https://"):
        # absolute-form (RFC 9112 §3.2.2): its authority replaces Host
        authority, target = absolute_form(uri)
        hosts = [authority]
        path = target.split(b"?", 1)[0]
    elif len(hosts) > 1 or (not hosts and request.clientproto == b"HTTP/1.1"):
        return None
    raw_host = hosts[0].decode("latin-1") if hosts else ""
    headers = request.requestHeaders

    def header_values(name: str):
        raw = headers.getRawHeaders(name.encode("latin-1"), ())
        return tuple(v.decode("latin-1") for v in raw)

    # tuple.__new__ directly: a named tuple's own constructor is a Python
    # function, a frame per request (fields in RequestFacts' order)
    return _new_tuple(RequestFacts, (normalize_host(raw_host), path.decode("latin-1"),
                                     request.method.decode("latin-1"), header_values))


def absolute_form(uri: bytes) -> Tuple[bytes, bytes]:
    """An absolute-form target's authority (without any userinfo) and its
    origin-form path and query."""
    parsed = URI.fromBytes(uri)
    target = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    return parsed.netloc.rpartition(b"@")[2], target


def upstream_port_name(ref: ServiceRef, namespace: str, snapshot: Snapshot) -> str:
    """The port name a request waits on and picks a pod by: the target's
    ``portName``, else the name the Service gives its port number, else ""."""
    if ref.port_name:
        return ref.port_name
    svc = snapshot.services.get(f"{namespace}/{ref.name}")
    sp = svc.port_by_number(ref.port) if svc is not None and ref.port else None
    return sp.name if sp is not None else ""


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
    """Where one attempt goes: the pool key, and what to fall back to."""

    scheme: bytes
    host: str
    port: int
    server_name: str
    port_name: str = ""
    #: for a pod target: the ready pods not yet tried (this one may be among
    #: them), then the Service target
    alternatives: Tuple[Tuple[str, int], ...] = ()
    service: Optional["Target"] = None

    @property
    def key(self):
        return (self.scheme, self.host, self.port, self.server_name)

    def describe(self) -> str:
        return f"{self.scheme.decode()}://{join_host_port(self.host, self.port)}"


@define(eq=False)
class InFlight:
    """Requests the pipeline has not finished yet, counted or not (static
    forwards, tunnels): what a drain waits for.  One per interceptor,
    shared by its plain and TLS pipelines."""

    count: int = 0


@define
class Pipeline:
    """The long-lived parts of the request path."""

    clock: object
    store: StateStore
    router: IRouter
    counter: object
    gate: ReadinessGate
    pool: object
    settings: ProxySettings = ProxySettings()
    metrics: object = None
    #: C{KEDA_HTTP_LOG_REQUESTS}: one line per request (L{zaplog.log_request})
    log_requests: bool = False
    #: a L{keda_proxy.ops._tracing.Tracer} when tracing is on
    tracer: object = None
    in_flight: InFlight = field(factory=InFlight)
    #: (id(ServiceRef), namespace) -> (ref, services, Target); see _service_target
    _targets: dict = field(factory=dict, init=False, repr=False)

    def handle(self, request) -> None:
        started = self.clock.seconds()
        route = None
        facts = None if request.method == b"CONNECT" else request_facts(request)
        if facts is not None:
            route = self.router.route(facts)
        if route is not None:
            Exchange(self, request, route, facts, started).start()
            return
        if request.method == b"CONNECT":
            write_error(request, http.NOT_ALLOWED)
        elif facts is None:
            write_error(request, http.BAD_REQUEST)
        else:
            write_error(request, http.NOT_FOUND)
        if self.metrics is not None:
            self.metrics.record(request, started, None)
        if self.log_requests:
            log_request(request, started=started, finished=self.clock.seconds())
        if self.tracer is not None:
            self.tracer.finish(self.tracer.start(_traceparent(request)), request.method,
                               request.path, request.code, None, None)


@implementer(IResponseSink, IHeldRequest)
class Exchange:
    """One request's journey through the pipeline.

    A plain class with class-level defaults: it is made for every request,
    and most of its state is only ever needed on unusual paths.
    """

    snapshot: Snapshot = None
    _gone = False
    _hold = None
    #: when the request began to be held (only kept with metrics on)
    _held_at: Optional[float] = None
    _readiness_timer = None
    _timers = ()
    _timed_out = False
    _streaming = False
    _ticket = None
    _connecting = None
    _conn = None
    _target = None
    _body_writer = None
    _deadline_at: Optional[float] = None
    _retried = False
    _head = None
    _request_head = None
    #: the protocol the client asks to switch to (WebSockets), if any
    _upgrade = None
    #: whether it waited for a scale from zero (None: not sent to the target)
    _cold_start = None
    #: the pod it was sent to, as the endpoint selector was told
    _pod = None
    #: its L{keda_proxy.ops._tracing.RequestTrace}, when tracing is on
    _trace = None

    def __init__(self, p: Pipeline, request, route: Route, facts: RequestFacts,
                 started: float = 0.0):
        self.p = p
        self.request = request
        self.route = route
        self.facts = facts
        self.started = started

    def start(self) -> None:
        p = self.p
        p.in_flight.count += 1
        if p.tracer is not None:
            self._trace = p.tracer.start(_traceparent(self.request))
        self.snapshot = p.store.current
        if hasattr(type(self.request), "on_done"):
            self.request.on_done = self._finished
        else:
            self.request.notifyFinish().addBoth(self._finished)
        static = self._matching_static_route() if self.route.static_routes else None
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
        if not ready and self._answered_cold():
            return
        deadline = self.route.timeouts.request
        if deadline is None:
            deadline = p.settings.request_timeout
        if deadline > 0:
            self._deadline_at = p.clock.seconds() + deadline
            self._later(deadline, self._request_deadline)
        self._await_ready(ready)

    def _answered_cold(self) -> bool:
        """For a counted request whose target has no ready endpoint: serve
        the placeholder, or refuse the request past the route's pending
        limit, as Go's cold-start step does.  True when it was answered.

        A placeholder route answers every such request with the
        placeholder, unless it has an explicit ``maxPendingRequests`` and
        ``overflow: Placeholder``: then it holds requests up to the limit
        and only the overflow gets the placeholder.  Other routes hold up
        to their limit (``KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS`` when
        unset; 0 is no limit) and answer the overflow 503.  The rejected
        request was counted in ``/queue`` all the same, as in Go.
        """
        route = self.route
        placeholder = route.placeholder
        limit = route.max_pending_requests
        if placeholder is not None and (limit is None
                                        or route.overflow != OVERFLOW_PLACEHOLDER):
            write_static(self.request, route, placeholder, self.snapshot,
                         self.facts.path, http.SERVICE_UNAVAILABLE)
            return True
        p = self.p
        if limit is None:
            limit = p.settings.cold_start_max_pending_requests
        if limit <= 0 or p.gate.held_for_route(route.service_key, route.key) < limit:
            return False
        if p.metrics is not None:
            p.metrics.cold_start_rejected(route)
        if placeholder is not None:
            write_static(self.request, route, placeholder, self.snapshot,
                         self.facts.path, http.SERVICE_UNAVAILABLE)
        else:
            write_error(self.request, http.SERVICE_UNAVAILABLE, TOO_MANY_PENDING)
        return True

    def _matching_static_route(self):
        for static in self.route.static_routes:
            for rule in static.rules:
                if rule_matches(rule, self.facts):
                    return static
        return None

    # -- step 4: readiness ---------------------------------------------------

    def _await_ready(self, ready: bool) -> None:
        """Forward now if C{ready} (as L{start} found the Service), else wait."""
        if ready:
            self._forward_primary(False)  # warm: no Deferred on this path
            return
        timeout = self.route.timeouts.readiness
        if timeout is None:
            timeout = self.p.settings.readiness_timeout
        if self.route.fallback is not None and timeout == 0:
            timeout = DEFAULT_FALLBACK_READINESS
        port_name = upstream_port_name(self.route.target, self.route.namespace, self.snapshot)
        # Everything that does not depend on the pod is done now, so that
        # the release after a scale-from-zero has as little left to do.
        self._build_request_head()
        route, gate, metrics = self.route, self.p.gate, self.p.metrics
        if metrics is not None:
            if not gate.held_for_route(route.service_key, route.key):
                metrics.cold_start_began(route)
            self._held_at = self.p.clock.seconds()
        self._hold = gate.hold(route.service_key, port_name, self.facts, self, route.key)
        if self._trace is not None:
            self._trace.hold_start = self.p.tracer.clock_ns()
        if timeout > 0:
            self._readiness_timer = self._later(timeout, self._not_ready)

    def ready(self, pod: Optional[Tuple[str, int]]) -> None:
        """The gate's call: the Service is ready, and C{pod} was picked
        (None: the Service address)."""
        self._hold = None
        if self._held_at is not None:
            self._held_for()
        if self._trace is not None:
            self._trace.hold_end = self.p.tracer.clock_ns()
        timer = self._readiness_timer
        if timer is not None and timer.active():
            timer.cancel()
        if self._gone:
            return
        self.snapshot = self.p.store.current
        self._forward_primary(True, pod)

    def pod_connection(self):
        """Only with direct-pod routing: the Service's scheme and TLS name,
        which a connection to one of its pods keeps."""
        if not self.p.settings.direct_pod_routing:
            return None
        try:
            target = self._service_target(self.route.target)
        except RouteError:
            return None  # reported when it is released
        return target.scheme, target.server_name

    def _unhold(self) -> bool:
        hold, self._hold = self._hold, None
        if hold is None:
            return False
        self.p.gate.unhold(hold)
        if self._held_at is not None:
            self._held_for()
        return True

    def _held_for(self) -> None:
        """The hold is over, released (L{ready}) or withdrawn (L{_unhold}:
        timed out or abandoned), which happens once: observe it."""
        self.p.metrics.cold_start_waited(self.route, self.p.clock.seconds() - self._held_at)

    def _not_ready(self) -> None:
        """The readiness timeout or the request deadline, while held."""
        if not self._unhold() or self._gone or self.request.finished:
            return
        trace = self._trace
        if trace is not None:
            trace.hold_end = self.p.tracer.clock_ns()
            trace.fallback = self.route.fallback is not None and not self._timed_out
        if self.route.fallback is None or self._timed_out:
            log.info("{route}: backend not ready in time", route=self.route.key)
            write_error(self.request, http.GATEWAY_TIMEOUT)
            return
        try:
            target = self._service_target(self.route.fallback)
        except RouteError as e:
            self._route_error(e)
            return
        if self.p.metrics is not None:
            self.p.metrics.cold_start_fell_back(self.route)
        self._send(target)

    # -- step 5: endpoint selection ----------------------------------------

    def _forward_primary(self, cold_start, pod=_PICK) -> None:
        """Send to the route's target: with direct-pod routing, to C{pod}
        (from the gate), or else to a pod picked now; None means the
        Service."""
        if self.request.finished or self._gone:
            return
        try:
            target = self._service_target(self.route.target)
        except RouteError as e:
            self._route_error(e)
            return
        self._cold_start = cold_start
        if cold_start is not None and self.p.settings.enable_cold_start_header:
            # straight into the store under Twisted's canonical name: the
            # public setter would encode the name and check the value again
            self.request.responseHeaders._rawHeaders[COLD_START_KEY] = [
                b"true" if cold_start else b"false"]
        if self.p.settings.direct_pod_routing:
            if pod is _PICK:
                pod = self.p.gate.pick(self.route.service_key, target.port_name, self.facts)
            target = self._pod_target(target, pod)
        self._send(target)

    def _service_target(self, ref: ServiceRef) -> Target:
        """The Service address for C{ref}, remembered per (ref, Services
        snapshot): it only changes when the Services do."""
        services = self.snapshot.services
        cache = self.p._targets
        key = (id(ref), self.route.namespace)
        hit = cache.get(key)
        if hit is not None and hit[0] is ref and hit[1] is services:
            return hit[2]
        port, port_name = resolve_port(ref, self.route.namespace, self.snapshot)
        host = f"{ref.name}.{self.route.namespace}"
        scheme = b"https" if self.p.settings.upstream_tls else b"http"
        target = Target(scheme, host, port, server_name=host, port_name=port_name)
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (ref, services, target)
        return target

    def _pod_target(self, service: Target, pod: Optional[Tuple[str, int]]) -> Target:
        """The pod C{(ip, port)} as a target that keeps the Service's TLS
        name, with the other ready pods and then the Service to retry on."""
        if pod is None:
            log.debug("{route}: no ready pod for port {port!r}; using the Service address",
                      route=self.route.key, port=service.port_name)
            return service
        eps = self.snapshot.endpoints_for(self.route.service_key)
        self._on_pod(pod)
        return Target(service.scheme, pod[0], pod[1], service.server_name, service.port_name,
                      alternatives=eps.candidates.get(service.port_name, ()), service=service)

    def _on_pod(self, pod: Optional[Tuple[str, int]]) -> None:
        """The request now goes to C{pod} (None: no pod any more): the
        selector hears of the pod it leaves and of the one it takes."""
        selector = self.p.gate.selector
        if self._pod is not None:
            selector.finished(self._pod)
        self._pod = pod
        if pod is not None:
            selector.started(pod)

    def _route_error(self, e: Exception) -> None:
        log.error("{route}: {error}", route=self.route.key, error=str(e))
        write_error(self.request, http.INTERNAL_SERVER_ERROR)

    # -- step 6: forward ------------------------------------------------------

    def _send(self, target: Target, fresh: bool = False) -> None:
        """Get a connection for C{target} and send the request on it."""
        self._target = target
        trace = self._trace
        if trace is not None:
            if trace.client_start is None:
                trace.client_start = self.p.tracer.clock_ns()
            trace.peer = (target.host, target.port)
        body = self.request.body
        has_body = body is not None and not body.empty
        pool = self.p.pool
        if target.service is not None:
            budget = 0.0  # a pod: one attempt, then the next pod
        else:
            budget = self._dial_budget()
        if not fresh:
            conn = pool.take_idle(target.key, has_body)
            if conn is not None:
                self._connected(conn, target)
                return
        d = pool.connect(target.key, budget)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed,
                       callbackArgs=(target,), errbackArgs=(target,))

    def _dial_budget(self) -> float:
        if self._deadline_at is not None:
            return max(0.0, self._deadline_at - self.p.clock.seconds())
        return self.p.settings.dial_budget

    def _connect_failed(self, f, target: Target) -> None:
        self._connecting = None
        if f.check(CancelledError) or self._gone or self.request.finished:
            return
        if target.service is not None:
            # a stale pod: nothing was sent, so try another, then the Service
            tried = (target.host, target.port)
            others = tuple(c for c in target.alternatives if c != tried)
            if others:
                ip, port = self.p.gate.selector.select(others, self.facts)
                rest = tuple(c for c in others if c != (ip, port))
                log.info("{route}: pod {pod} refused; trying another",
                         route=self.route.key, pod=target.describe())
                self._on_pod((ip, port))
                self._send(attrs.evolve(target, host=ip, port=port, alternatives=rest))
            else:
                log.info("{route}: no ready pod answered; using the Service address",
                         route=self.route.key)
                self._on_pod(None)
                self._send(target.service)
            return
        self._fail_upstream(f, target)

    def _connected(self, conn, target: Target) -> None:
        self._connecting = None
        req = self.request
        if self._gone or req.finished:
            conn.owner and conn.owner.connection_reusable(conn)
            return
        self._conn = conn
        body = req.body
        length = 0 if body is None else body.length
        head = self._request_head or self._build_request_head()
        has_body = body is not None and not body.empty
        conn.send(req.method, head, self, chunked_body=length is None, has_body=has_body,
                  upgrade=self._upgrade)
        if has_body:
            self._body_writer = _BodyWriter(conn, body)
            body.attach(self._body_writer)
        timeout = self.route.timeouts.response_header
        if timeout is None:
            timeout = self.p.settings.response_header_timeout
        if timeout > 0:
            conn.arm_timer(timeout, self._response_header_timeout)

    def _build_request_head(self) -> bytes:
        """The upstream request head: the same for every attempt and every
        target, so a held request builds it while it waits."""
        req = self.request
        body = req.body
        uri = req.uri
        if uri[:1] == b"/" or uri == b"*":
            authority, target = None, uri
        else:  # absolute form: its authority is the Host
            authority, target = absolute_form(uri)
        trace = self._trace
        head = self._request_head = request_head(
            req.method, target, req.requestHeaders, *_client_facts(req.channel),
            0 if body is None else body.length, authority,
            None if trace is None else trace.upstream_traceparent())
        if b"Connection" in req.requestHeaders._rawHeaders:  # rare: skip the lookup
            self._upgrade = upgrade_requested(req.requestHeaders)
        return head

    def _response_header_timeout(self) -> None:
        self._timed_out = True
        if self._conn is not None:
            self._conn.abort_with(_Timeout())

    # IResponseSink -----------------------------------------------------------

    def response_head(self, head) -> None:
        if self._conn is not None:
            self._conn.disarm_timer()
        req = self.request
        if self._gone or req.finished:
            self._abort_upstream()
            return
        self._take_head(req, head)

    def _take_head(self, req, head) -> None:
        """The upstream's status and header lines become the response's."""
        req.code = head.code
        req.code_message = head.phrase
        req.upstream_head = head  # its header lines go out as they are
        self._head = head
        self._streaming = True

    def response_data(self, data: bytes) -> None:
        req = self.request
        if self._gone or req.finished:
            return
        conn = self._conn
        if req.producer is None and conn is not None and conn.more_expected:
            # a body that spans reads: let a slow client slow the upstream
            req.registerProducer(conn.transport, True)
        req.write(data)

    def response_whole(self, head, body: bytes) -> None:
        self._release_body()
        self._conn = None
        req = self.request
        if self._gone or req.finished:
            return
        self._take_head(req, head)
        req.write(body)
        req.finish()

    def response_done(self) -> None:
        if self._body_writer is not None:
            self._release_body()
        self._conn = None
        req = self.request
        if self._gone or req.finished:
            return
        if req.producer is not None:
            req.unregisterProducer()
        req.finish()

    def response_failed(self, reason, response_started: bool) -> None:
        conn, self._conn = self._conn, None
        self._release_body()
        req = self.request
        if self._gone or req.finished:
            return
        if response_started:
            log.info("{route}: upstream body broke off: {error}",
                     route=self.route.key, error=reason.getErrorMessage())
            req.unregisterProducer()
            req.channel.transport.abortConnection()
            return
        if not self._timed_out and conn is not None and conn.uses > 1 and not conn.answered \
                and not self._retried and self._replayable() \
                and reason.check(ConnectionDone, ConnectionLost):
            # a pooled connection the upstream had closed before answering:
            # once more, fresh
            self._retried = True
            self._send(self._target, fresh=True)
            return
        self._fail_upstream(reason, self._target)

    def response_informational(self, head) -> None:
        """Pass a 1xx (103 Early Hints) on ahead of the response, as Go's
        ReverseProxy does; HTTP/1.0 clients get none (RFC 9110 §15.2)."""
        req = self.request
        if self._gone or req.finished:
            self._abort_upstream()
            return
        if req.clientproto == b"HTTP/1.1" and not req.startedWriting:
            req.channel.write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.code, head.phrase, head.block))

    def response_upgraded(self, conn, rest: bytes) -> None:
        req = self.request
        if self._gone or req.finished:
            conn.abort()
            return
        self._conn = None
        Tunnel.open(self, conn, rest)

    # -- endings --------------------------------------------------------------

    def _replayable(self) -> bool:
        """Whether the request may be sent again, as Go decides: no body,
        and an idempotent method or an idempotency key."""
        req = self.request
        body = req.body
        if body is not None and not body.empty:
            return False
        if req.method in _IDEMPOTENT:
            return True
        raw = req.requestHeaders._rawHeaders
        return b"Idempotency-Key" in raw or b"X-Idempotency-Key" in raw

    def _fail_upstream(self, f, target: Target) -> None:
        if self._timed_out or f.check(_Timeout):
            log.info("{route}: upstream {uri} timed out", route=self.route.key,
                     uri=target.describe())
            write_error(self.request, http.GATEWAY_TIMEOUT)
            return
        if f.check(*CONNECT_ERRORS, ConnectionLost, ConnectionDone, UpstreamProtocolError):
            log.info("{route}: upstream {uri} failed: {error}", route=self.route.key,
                     uri=target.describe(), error=f.getErrorMessage())
        else:
            log.failure("{route}: upstream {uri} failed", f, route=self.route.key,
                        uri=target.describe())
        write_error(self.request, http.BAD_GATEWAY)

    def _release_body(self) -> None:
        writer, self._body_writer = self._body_writer, None
        if writer is not None:
            writer.close()

    def _abort_upstream(self) -> None:
        conn, self._conn = self._conn, None
        self._release_body()
        if conn is not None:
            conn.abort()

    def _later(self, delay: float, fn):
        timer = self.p.clock.callLater(delay, fn)
        if self._timers:
            self._timers.append(timer)
        else:
            self._timers = [timer]
        return timer

    def _request_deadline(self) -> None:
        self._timed_out = True
        if self.request.finished or self._gone:
            return
        if self._streaming:
            # Headers are out: the only honest signal left is a cut.
            self._abort_upstream()
            self.request.channel.transport.abortConnection()
            return
        if self._hold is not None:
            self._not_ready()
        elif self._connecting is not None:
            self._connecting.cancel()
            write_error(self.request, http.GATEWAY_TIMEOUT)
        elif self._conn is not None:
            self._conn.abort_with(_Timeout())
        else:
            write_error(self.request, http.GATEWAY_TIMEOUT)

    def _finished(self, result) -> None:
        """The client got its response, or went away; either way, once."""
        if result is not None:
            self._gone = True
        p = self.p
        p.in_flight.count -= 1
        if self._pod is not None:
            self._on_pod(None)
        if p.metrics is not None:
            p.metrics.record(self.request, self.started, self.route)
        if p.log_requests:
            log_request(self.request, started=self.started, finished=p.clock.seconds(),
                        route=self.route, cold_start=self._cold_start)
        if self._trace is not None:
            req = self.request
            p.tracer.finish(self._trace, req.method, req.path, req.code, self.route,
                            self._cold_start)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._ticket is not None:
            self._ticket.release()
        if self._gone:
            self._unhold()
            if self._connecting is not None:
                self._connecting.cancel()
            self._abort_upstream()


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class _Timeout(Exception):
    """A response-header or request deadline passed (504)."""


class _BodyWriter:
    """Streams a request body onto an upstream connection, pausing the
    client while the upstream's send buffer is full."""

    def __init__(self, conn, body):
        self.conn = conn
        self.body = body
        self.registered = False
        if conn.transport is not None:
            conn.transport.registerProducer(body, True)
            self.registered = True

    def write_body(self, data: bytes) -> None:
        self.conn.write_body(data)

    def end_body(self) -> None:
        self.conn.end_body()
        self.close()

    def close(self) -> None:
        self.body.detach()
        if self.registered:
            self.registered = False
            if self.conn.transport is not None:
                self.conn.transport.unregisterProducer()
            self.body.resumeProducing()


def _traceparent(request) -> Optional[bytes]:
    values = request.requestHeaders._rawHeaders.get(b"Traceparent")
    return values[0] if values else None


def _client_facts(channel):
    """The client address and scheme for X-Forwarded-*, worked out once per
    connection rather than once per request."""
    facts = getattr(channel, "_keda_client", None)
    if facts is None:
        addr = channel.getPeer() if channel.transport is not None else None
        scheme = b"https" if channel.isSecure() else b"http"
        facts = channel._keda_client = (getattr(addr, "host", None) or "unknown", scheme)
    return facts


class ReverseProxy(Resource):
    """The proxy site's root: every path goes to the L{Pipeline}."""

    isLeaf = True

    def __init__(self, pipeline: Pipeline):
        super().__init__()
        self.pipeline = pipeline

    def render(self, request):
        self.pipeline.handle(request)
        return NOT_DONE_YET
