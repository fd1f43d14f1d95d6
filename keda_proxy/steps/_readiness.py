"""
Holding requests until their Service has a ready endpoint.

C{wait(service, port_name)} gives a Deferred of C{(cold_start, pod_host)}:

 - a warm Service answers at once (an already-fired Deferred, nothing
   scheduled) with C{cold_start=False};
 - a cold one fires the moment a new snapshot shows the Service ready, with
   C{cold_start=True}; nothing polls;
 - C{pod_host} is a ready pod's ``ip:port`` for C{port_name} (IPv6
   bracketed), chosen by the endpoint selector from the snapshot that woke
   the request, or "" when that port name has no ready pod.

The caller bounds the wait by cancelling the Deferred (readiness timeout,
request deadline, client gone); a cancelled waiter is removed at once, so
abandoned waits leave nothing behind.

C{hold} is the same wait without the Deferred, for the proxy's own
requests: it calls C{waiter.ready(pod)} with the chosen C{(ip, port)} (or
None), and C{unhold} withdraws it.  A release after a scale-from-zero wakes
thousands of requests in a burst, and there a Deferred's callback chain
and the address's round trip through a string are a good part of the work
per request.  Given a route key, C{hold} also counts the request under its
route until it is woken or withdrawn (C{held_for_route}): the cold-start
pending limit is per route.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, Optional, Tuple

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from keda_proxy.interfaces import IEndpointSelector, IHeldRequest
from keda_proxy.state._endpoints import join_host_port
from keda_proxy.state._store import Snapshot, StateStore
from keda_proxy.steps._selection import RandomSelector


@define
class ReadinessGate:
    """Per-Service waiting lists, woken by snapshot swaps.

    Woken requests are released C{batch} per reactor turn, oldest first:
    releasing thousands in one turn would hold every response back until
    the last request had been dialled, and would make connect timeouts
    fire on connections that completed long before the turn ended.  A pod
    on the same host usually answers a batch within its turn, so the
    next batch reuses those connections: the batch is also about how many
    connections a cold start opens to a pod.  16 opens few, and is still
    large next to the cost of a reactor turn.

    @ivar selector: the L{IEndpointSelector} that picks the pod.
    """

    store: StateStore
    batch: int = 16
    selector: IEndpointSelector = field(factory=RandomSelector)
    #: service key -> the L{Hold}s waiting on it, oldest first
    _waiters: Dict[str, Dict["Hold", None]] = field(factory=dict)
    #: service key -> route key -> how many of those holds are the route's
    _route_counts: Dict[str, Dict[str, int]] = field(factory=dict)
    _releasing: deque = field(factory=deque)
    _release_call: object = None
    #: called with a Service key and how many requests are held for it,
    #: each time one more is
    hold_listeners: list = field(factory=list)

    def __attrs_post_init__(self):
        self.store.subscribe(self._snapshot_changed)

    def is_ready(self, service_key: str) -> bool:
        return self.store.current.endpoints_for(service_key).ready

    def pick(self, service_key: str, port_name: str, facts=None) -> Optional[Tuple[str, int]]:
        """A ready pod's C{(ip, port)} for C{port_name}, or None."""
        candidates = self.store.current.endpoints_for(service_key).candidates.get(port_name)
        if not candidates:
            return None
        return self.selector.select(candidates, facts)

    def pod_host(self, service_key: str, port_name: str, facts=None) -> str:
        """L{pick} as ``ip:port``, or ""."""
        pair = self.pick(service_key, port_name, facts)
        return "" if pair is None else join_host_port(*pair)

    def wait(self, service_key: str, port_name: str = "", facts=None) -> Deferred:
        """A Deferred of C{(cold_start, pod_host)}; see the module doc.

        @param facts: the request's L{keda_proxy.state._model.RequestFacts}, for
            the selector.
        """
        if self.is_ready(service_key):
            return succeed((False, self.pod_host(service_key, port_name, facts)))
        d = Deferred(lambda d: self.unhold(hold))
        hold = self.hold(service_key, port_name, facts, _DeferredWaiter(d))
        return d

    def hold(self, service_key: str, port_name: str, facts, waiter,
             route_key: Optional[str] = None) -> "Hold":
        """Hold C{waiter} (an L{IHeldRequest}) until the Service is ready,
        then call C{waiter.ready(pod)} once, with a pod C{(ip, port)} picked
        then, or None when C{port_name} has no ready pod.  The caller checks
        readiness first: this always waits for the next ready snapshot.

        @param route_key: the route the request came by, to be counted in
            L{held_for_route} while it waits.
        """
        hold = Hold(waiter, service_key, port_name, facts, route_key)
        group = self._waiters.get(service_key)
        if group is None:
            group = self._waiters[service_key] = {}
        group[hold] = None
        if route_key is not None:
            counts = self._route_counts.get(service_key)
            if counts is None:
                counts = self._route_counts[service_key] = {}
            counts[route_key] = counts.get(route_key, 0) + 1
        for listener in self.hold_listeners:
            listener(service_key, len(group))
        return hold

    def holds(self, service_key: str):
        """The L{Hold}s waiting on a Service, oldest first (read-only)."""
        return self._waiters.get(service_key, {}).keys()

    def held_services(self):
        """The Services that requests are held for."""
        return list(self._waiters)

    def held_for_route(self, service_key: str, route_key: str) -> int:
        """How many requests that came by route C{route_key} are held for
        its target Service C{service_key} (woken ones no longer count)."""
        counts = self._route_counts.get(service_key)
        return 0 if counts is None else counts.get(route_key, 0)

    def unhold(self, hold: "Hold") -> None:
        """Withdraw C{hold}: its waiter is not called (it may have been
        woken and wait for its turn to be released)."""
        hold.waiter = None
        key = hold.service_key
        group = self._waiters.get(key)
        if group is not None and hold in group:
            del group[hold]
            if not group:
                del self._waiters[key]
            route_key = hold.route_key
            if route_key is not None:
                counts = self._route_counts[key]
                left = counts[route_key] - 1
                if left:
                    counts[route_key] = left
                elif len(counts) == 1:
                    del self._route_counts[key]
                else:
                    del counts[route_key]

    def waiting(self, service_key: str = None) -> int:
        """How many requests are held (for one Service, or in all), not
        counting those woken and waiting for their turn to be released."""
        if service_key is not None:
            return len(self._waiters.get(service_key, ()))
        return sum(len(g) for g in self._waiters.values())

    def _snapshot_changed(self, old: Snapshot, new: Snapshot) -> None:
        if not self._waiters or old.endpoints is new.endpoints:
            return
        woken = [key for key in self._waiters if new.endpoints_for(key).ready]
        for key in woken:
            self._releasing.extend(self._waiters.pop(key))
            self._route_counts.pop(key, None)
        self._release()

    def _release(self) -> None:
        self._release_call = None
        queue = self._releasing
        pick = self.pick
        for _ in range(min(self.batch, len(queue))):
            hold = queue.popleft()
            waiter = hold.waiter
            if waiter is not None:  # a hold withdrawn after waking is skipped
                hold.waiter = None
                # chosen now, from the snapshot of this turn: a pod that
                # went away meanwhile is not picked
                waiter.ready(pick(hold.service_key, hold.port_name, hold.facts))
        if queue and self._release_call is None:
            self._release_call = self.store.clock.callLater(0, self._release)


class Hold:
    """One held request (see L{ReadinessGate.hold})."""

    __slots__ = ("waiter", "service_key", "port_name", "facts", "route_key")

    def __init__(self, waiter, service_key: str, port_name: str, facts,
                 route_key: Optional[str] = None):
        self.waiter = waiter
        self.service_key = service_key
        self.port_name = port_name
        self.facts = facts
        self.route_key = route_key


@implementer(IHeldRequest)
class _DeferredWaiter:
    """Fires a L{ReadinessGate.wait} Deferred."""

    __slots__ = ("deferred",)

    def __init__(self, deferred: Deferred):
        self.deferred = deferred

    def ready(self, pod: Optional[Tuple[str, int]]) -> None:
        self.deferred.callback((True, "" if pod is None else join_host_port(*pod)))

    def pod_connection(self):
        return None  # a bare wait: nobody to open connections for
