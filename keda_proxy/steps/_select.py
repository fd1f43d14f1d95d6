"""
Step 5: choose the endpoint, a ready pod or the Service.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep
from keda_proxy.steps._responses import write_error
from keda_proxy.steps._targets import RouteError, Target, switch_pod
from keda_proxy.wire._memo import remember

log = Logger()


@implementer(IRequestStep)
class SelectEndpoint:
    """The route's target Service, or its fallback after a readiness
    timeout; with direct-pod routing, one of the target's ready pods (the
    one the gate picked on release, or one the endpoint selector picks
    now), keeping the Service's TLS name, with the other ready pods and
    then the Service to retry on.  A target that cannot be resolved is a
    500.

    A pod's target is made once per (Service target, pod, ready pods) and
    reused: a release after a scale from zero sends thousands of requests
    to the same pod in a few turns.  The selector hears of each request
    (C{started}, C{finished}) unless it says it does not count them
    (C{counts_requests}, see L{keda_proxy.interfaces.IEndpointSelector}).
    """

    def __init__(self, gate, targets, settings, next):
        self.gate = gate
        self.targets = targets
        self.settings = settings
        self.next = next
        #: (id(Service target), pod) -> (Service target, ready pods, pod target)
        self._pod_targets: dict = {}

    def handle(self, context) -> None:
        route = context.route
        ref = route.fallback if context.fallback else route.target
        try:
            target = self.targets.target(ref, route.namespace, context.snapshot)
        except RouteError as e:
            log.error("{route}: {error}", route=route.key, error=str(e))
            write_error(context.downstream, 500)
            return
        if self.settings.direct_pod_routing and not context.fallback:
            pod = context.released_pod
            if pod is None and not context.cold_start:
                pod = self.gate.pick(route.service_key, target.port_name, context.facts)
            if pod is None:
                log.debug("{route}: no ready pod for port {port!r}; using the Service address",
                          route=route.key, port=target.port_name)
            else:
                selector = self.gate.selector
                if getattr(selector, "counts_requests", True):
                    switch_pod(context, selector, pod)
                    context.on_end(lambda gone: switch_pod(context, selector, None))
                candidates = context.snapshot.endpoints_for(route.service_key) \
                    .candidates.get(target.port_name, ())
                target = self._pod_target(target, pod, candidates)
        context.target = target
        self.next.handle(context)

    def _pod_target(self, service: Target, pod, candidates) -> Target:
        key = (id(service), pod)
        hit = self._pod_targets.get(key)
        if hit is not None and hit[0] is service and hit[1] is candidates:
            return hit[2]
        target = Target(service.scheme, pod[0], pod[1], service.server_name,
                        service.port_name, alternatives=candidates, service=service)
        remember(self._pod_targets, key, (service, candidates, target), _POD_TARGETS_LIMIT)
        return target


#: pod targets kept (L{SelectEndpoint._pod_target})
_POD_TARGETS_LIMIT = 10_000
