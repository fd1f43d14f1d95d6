"""
The request path: the steps composed in one function, and the entry
every downstream protocol hands its requests to.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

from attrs import define, field
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep, IRouter
from keda_proxy.ops._zaplog import log_request
from keda_proxy.state._store import StateStore
from keda_proxy.steps._admit import Admit
from keda_proxy.steps._await import AwaitReadiness
from keda_proxy.steps._context import RequestContext
from keda_proxy.steps._forward import Forward
from keda_proxy.steps._readiness import ReadinessGate
from keda_proxy.steps._responses import write_error
from keda_proxy.steps._route import RouteRequest
from keda_proxy.steps._select import SelectEndpoint
from keda_proxy.steps._static import ServeStatic
from keda_proxy.steps._targets import ServiceTargets
from keda_proxy.upstream._dial import MAX_RETRY_DURATION

log = Logger()


@define(frozen=True)
class ProxySettings:
    """The slice of L{keda_proxy.ops.Config} the request path needs."""

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


@define(eq=False)
class InFlight:
    """Requests not finished yet, counted or not (static responses,
    tunnels): what a drain waits for.  One per interceptor, shared by its
    plain and TLS listeners."""

    count: int = 0


def build_request_path(p: "Pipeline"):
    """The steps every request goes through, in order (each answers, or
    passes the request on to the next):

    1. route: routing plugins, then the routing table          -> 404
    2. a static route or placeholder                           -> served here
       then the request steps of plugins (C{KEDA_HTTP_REQUEST_STEPS})
    3. admit: count in ``/queue``; while cold, the placeholder
       or the pending limit; start the request deadline         -> 503
    4. await readiness: hold until a pod is ready; fallback    -> 504
    5. select the endpoint: a ready pod, or the Service         -> 500
    6. forward, streaming both ways; a tunnel on 101            -> 502 / 504
    """
    settings, gate = p.settings, p.gate
    targets = ServiceTargets(settings.upstream_tls)
    return _chain(
        partial(RouteRequest, p.router, p.store),
        partial(ServeStatic, gate),
        *(partial(_guarded, plugin) for plugin in p.request_steps),
        partial(Admit, p.counter, gate, settings, p.metrics),
        partial(AwaitReadiness, gate, targets, settings, p.metrics, p.tracer),
        partial(SelectEndpoint, gate, targets, settings),
        partial(Forward, p.pool, gate.selector, settings, p.tracer),
    )


def _guarded(plugin, next):
    """A plugin's step, made to pass on to C{next}, that cannot break the
    request path: an exception escaping it is logged and answered 500."""
    return _Guarded(getattr(plugin, "name", repr(plugin)), plugin.step(next))


@implementer(IRequestStep)
class _Guarded:
    def __init__(self, name: str, step):
        self.name = name
        self.step = step

    def handle(self, context) -> None:
        try:
            self.step.handle(context)
        except Exception:
            log.failure("request step {name} failed", name=self.name)
            if not context.over:
                write_error(context.downstream, 500)


def _chain(*makers):
    """Make each step with the next one (the last with None); the first."""
    step = None
    for make in reversed(makers):
        step = make(step)
    return step


def _rebuild(pipeline, attribute, value):
    """A part replaced: the steps are made again on the next request."""
    if attribute.name != "first":
        object.__setattr__(pipeline, "first", None)
    return value


@define(on_setattr=_rebuild)
class Pipeline:
    """The long-lived parts of the request path, and its entry point:
    L{serve} takes each request from a downstream protocol."""

    clock: object
    store: StateStore
    router: IRouter
    counter: object
    gate: ReadinessGate
    pool: object
    settings: ProxySettings = ProxySettings()
    metrics: object = None
    #: C{KEDA_HTTP_LOG_REQUESTS}: one line per request (L{log_request})
    log_requests: bool = False
    #: a L{keda_proxy.ops._tracing.Tracer} when tracing is on
    tracer: object = None
    in_flight: InFlight = field(factory=InFlight)
    #: L{keda_proxy.interfaces.IRequestStepPlugin}s, in order
    request_steps: tuple = ()
    #: the first step, made from the parts above
    first: object = field(init=False, repr=False, default=None)

    def serve(self, downstream) -> None:
        """Take one request (an L{keda_proxy.interfaces.IDownstreamExchange})
        through the steps."""
        context = RequestContext(downstream, self.clock, self.clock.seconds())
        self.in_flight.count += 1
        tracer = self.tracer
        if tracer is not None:
            values = downstream.headers.get(b"Traceparent")
            context.trace = tracer.start(values[0] if values else None)
        downstream.notify_done(partial(self._finished, context))
        first = self.first
        if first is None:
            first = self.first = build_request_path(self)
        first.handle(context)

    def _finished(self, context: RequestContext, result: Optional[object]) -> None:
        """The client got its response, or went away; either way, once."""
        self.in_flight.count -= 1
        downstream, route = context.downstream, context.route
        if self.metrics is not None:
            self.metrics.record(downstream, context.started, route)
        if self.log_requests:
            log_request(downstream, started=context.started, finished=self.clock.seconds(),
                        route=route, cold_start=context.cold_start)
        if context.trace is not None:
            self.tracer.finish(context.trace, downstream.method, downstream.path,
                               downstream.code, route, context.cold_start)
        context.end(result is not None)
