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
"""

from __future__ import annotations

from collections import deque
from typing import Dict, Optional, Tuple

from attrs import define, field
from twisted.internet.defer import Deferred, succeed

from keda_proxy.endpoints import RandomSelector, join_host_port
from keda_proxy.interfaces import IEndpointSelector
from keda_proxy.store import Snapshot, StateStore


@define
class ReadinessGate:
    """Per-Service waiting lists, woken by snapshot swaps.

    Woken requests are released C{batch} per reactor turn, oldest first:
    releasing thousands in one turn would hold every response back until
    the last request had been dialled, and would make connect timeouts
    fire on connections that completed long before the turn ended.

    @ivar selector: the L{IEndpointSelector} that picks the pod.
    """

    store: StateStore
    batch: int = 32
    selector: IEndpointSelector = field(factory=RandomSelector)
    #: service key -> waiter id -> (Deferred, port name, request facts)
    _waiters: Dict[str, Dict[int, tuple]] = field(factory=dict)
    _next_id: int = 0
    _releasing: deque = field(factory=deque)
    _release_call: object = None

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

        @param facts: the request's L{keda_proxy.model.RequestFacts}, for
            the selector.
        """
        if self.is_ready(service_key):
            return succeed((False, self.pod_host(service_key, port_name, facts)))
        waiters = self._waiters.setdefault(service_key, {})
        wid = self._next_id
        self._next_id += 1

        def cancel(d):
            group = self._waiters.get(service_key)
            if group is not None:
                group.pop(wid, None)
                if not group:
                    del self._waiters[service_key]

        d = Deferred(cancel)
        waiters[wid] = (d, service_key, port_name, facts)
        return d

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
            self._releasing.extend(self._waiters.pop(key).values())
        self._release()

    def _release(self) -> None:
        self._release_call = None
        queue = self._releasing
        for _ in range(min(self.batch, len(queue))):
            d, service_key, port_name, facts = queue.popleft()
            if not d.called:  # a wait cancelled after waking is skipped
                # chosen now, from the snapshot of this turn: a pod that
                # went away meanwhile is not picked
                d.callback((True, self.pod_host(service_key, port_name, facts)))
        if queue and self._release_call is None:
            self._release_call = self.store.clock.callLater(0, self._release)
