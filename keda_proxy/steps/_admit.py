"""
Step 3: count the request in ``/queue``, and turn it away while its
target is cold if the route says so.
"""

from __future__ import annotations

from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep
from keda_proxy.state._model import OVERFLOW_PLACEHOLDER
from keda_proxy.steps._responses import TOO_MANY_PENDING, write_error, write_static


@implementer(IRequestStep)
class Admit:
    """Count the request (KEDA scales on these counts), then, when its
    target has no ready endpoint, serve the placeholder or refuse it past
    the route's pending limit; start the request deadline."""

    def __init__(self, counter, gate, settings, metrics, next):
        self.counter = counter
        self.gate = gate
        self.settings = settings
        self.metrics = metrics
        self.next = next

    def handle(self, context) -> None:
        route = context.route
        if not context.bypass:
            ticket = context.ticket = self.counter.enter(route.key)
            context.on_end(ticket.release)
            if not self.gate.is_ready(route.service_key) and self._answered_cold(context):
                return
        deadline = route.timeouts.request
        if deadline is None:
            deadline = self.settings.request_timeout
        if deadline > 0:
            context.deadline_at = context.clock.seconds() + deadline
            context.later(deadline, lambda: _deadline(context))
        self.next.handle(context)

    def _answered_cold(self, context) -> bool:
        """Serve the placeholder, or refuse the request past the route's
        pending limit, as Go's cold-start step does; True when answered.

        A placeholder route answers every such request with the
        placeholder, unless it has an explicit ``maxPendingRequests`` and
        ``overflow: Placeholder``: then it holds requests up to the limit
        and only the overflow gets the placeholder.  Other routes hold up
        to their limit (``KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS`` when
        unset; 0 is no limit) and answer the overflow 503.  The rejected
        request was counted in ``/queue`` all the same, as in Go.
        """
        route = context.route
        placeholder = route.placeholder
        limit = route.max_pending_requests
        if placeholder is not None and (limit is None
                                        or route.overflow != OVERFLOW_PLACEHOLDER):
            write_static(context.downstream, route, placeholder, context.snapshot,
                         context.facts.path, 503)
            return True
        if limit is None:
            limit = self.settings.cold_start_max_pending_requests
        if limit <= 0 or self.gate.held_for_route(route.service_key, route.key) < limit:
            return False
        if self.metrics is not None:
            self.metrics.cold_start_rejected(route)
        if placeholder is not None:
            write_static(context.downstream, route, placeholder, context.snapshot,
                         context.facts.path, 503)
        else:
            write_error(context.downstream, 503, TOO_MANY_PENDING)
        return True


def _deadline(context) -> None:
    """The request deadline passed: the step the request is in decides
    what that means (a 504, or a cut once the response has begun)."""
    context.timed_out = True
    if context.over:
        return
    react = context.on_deadline
    if react is not None:
        react()
    else:
        write_error(context.downstream, 504)
