"""
Step 2: a route's static responses, served here.
"""

from __future__ import annotations

from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep
from keda_proxy.state._model import MODE_ALWAYS
from keda_proxy.state._routing import rule_matches
from keda_proxy.steps._responses import write_static


@implementer(IRequestStep)
class ServeStatic:
    """A static route whose rules match answers the request: always
    (``Always``), or while the target has no ready endpoint
    (``WhenUnavailable``); otherwise that request goes straight to the
    target, neither counted nor held, as in Go."""

    def __init__(self, gate, next):
        self.gate = gate
        self.next = next

    def handle(self, context) -> None:
        route = context.route
        if route.static_routes:
            static = _matching(route, context.facts)
            if static is not None:
                if static.mode == MODE_ALWAYS or not self.gate.is_ready(route.service_key):
                    write_static(context.downstream, route, static.response, context.snapshot,
                                 context.facts.path, 200)
                    return
                context.bypass = True
        self.next.handle(context)


def _matching(route, facts):
    for static in route.static_routes:
        for rule in static.rules:
            if rule_matches(rule, facts):
                return static
    return None
