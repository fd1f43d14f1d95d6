"""
Step 4: hold a request until its target has a ready endpoint.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IHeldRequest, IRequestStep
from keda_proxy.steps._forward import upstream_request_head
from keda_proxy.steps._responses import write_error
from keda_proxy.steps._targets import RouteError, upstream_port_name

log = Logger()

#: Go's default readiness timeout when a fallback exists and none is set.
DEFAULT_FALLBACK_READINESS = 30.0


@implementer(IRequestStep)
class AwaitReadiness:
    """Pass a request on at once when its target is ready; otherwise hold
    it in the L{keda_proxy.steps._readiness.ReadinessGate} until an EndpointSlice says
    a pod is ready, the readiness timeout passes (504, or the fallback
    Service), or the client leaves."""

    def __init__(self, gate, targets, settings, metrics, tracer, next):
        self.gate = gate
        self.targets = targets
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer
        self.next = next

    def handle(self, context) -> None:
        if context.bypass:
            self.next.handle(context)
            return
        route = context.route
        if self.gate.is_ready(route.service_key):
            context.cold_start = False
            self.next.handle(context)
            return
        timeout = route.timeouts.readiness
        if timeout is None:
            timeout = self.settings.readiness_timeout
        if route.fallback is not None and timeout == 0:
            timeout = DEFAULT_FALLBACK_READINESS
        port_name = upstream_port_name(route.target, route.namespace, context.snapshot)
        # Everything that does not depend on the pod is done now, so that
        # the release after a scale-from-zero has as little left to do.
        upstream_request_head(context)
        held = _Held(self, context)
        if self.metrics is not None:
            if not self.gate.held_for_route(route.service_key, route.key):
                self.metrics.cold_start_began(route)
            held.since = context.clock.seconds()
        held.hold = self.gate.hold(route.service_key, port_name, context.facts, held, route.key)
        if context.trace is not None:
            context.trace.hold_start = self.tracer.clock_ns()
        if timeout > 0:
            held.timer = context.later(timeout, held.not_ready)
        context.on_deadline = held.not_ready
        context.on_gone(held.client_left)


@implementer(IHeldRequest)
class _Held:
    """One held request, as the gate sees it."""

    hold = None
    timer = None
    #: when the hold began (only kept with metrics on)
    since: Optional[float] = None

    def __init__(self, step: AwaitReadiness, context):
        self.step = step
        self.context = context

    def ready(self, pod: Optional[Tuple[str, int]]) -> None:
        """The gate's call: the target is ready, and C{pod} was picked
        (None: the Service address)."""
        self.hold = None
        context, step = self.context, self.step
        if self.since is not None:  # L{_held_for}, inline: a release runs it a thousand times
            step.metrics.cold_start_waited(context.route, context.clock.seconds() - self.since)
        if context.trace is not None:
            context.trace.hold_end = step.tracer.clock_ns()
        timer = self.timer
        if timer is not None and timer.active():
            timer.cancel()
        context.on_deadline = None
        if context.over:
            return
        context.snapshot = step.gate.store.current
        context.cold_start = True
        context.released_pod = pod
        step.next.handle(context)

    def pod_connection(self):
        """Only with direct-pod routing: the Service's scheme and TLS name,
        which a connection to one of its pods keeps."""
        step, context = self.step, self.context
        if not step.settings.direct_pod_routing:
            return None
        route = context.route
        try:
            target = step.targets.target(route.target, route.namespace, context.snapshot)
        except RouteError:
            return None  # reported when it is released
        return target.scheme, target.server_name

    def not_ready(self) -> None:
        """The readiness timeout or the request deadline, while held."""
        if not self._unhold():
            return
        context, step = self.context, self.step
        context.on_deadline = None
        if context.over:
            return
        route = context.route
        trace = context.trace
        if trace is not None:
            trace.hold_end = step.tracer.clock_ns()
            trace.fallback = route.fallback is not None and not context.timed_out
        if route.fallback is None or context.timed_out:
            log.info("{route}: backend not ready in time", route=route.key)
            write_error(context.downstream, 504)
            return
        if step.metrics is not None:
            step.metrics.cold_start_fell_back(route)
        context.fallback = True
        step.next.handle(context)

    def client_left(self) -> None:
        self._unhold()

    def _unhold(self) -> bool:
        hold, self.hold = self.hold, None
        if hold is None:
            return False
        self.step.gate.unhold(hold)
        self._held_for()
        return True

    def _held_for(self) -> None:
        """The hold is over, released or withdrawn, which happens once."""
        if self.since is not None:
            self.step.metrics.cold_start_waited(self.context.route,
                                                self.context.clock.seconds() - self.since)
