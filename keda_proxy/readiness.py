"""
Holding requests until their Service has a ready endpoint.

A warm Service answers at once.  A cold one gets a Deferred that fires the
moment a new snapshot shows the Service ready; nothing polls.  The caller
bounds the wait by cancelling the Deferred (readiness timeout, request
deadline, client gone), and a cancelled waiter is removed at once, so
abandoned waits leave nothing behind.
"""

from __future__ import annotations

from collections import deque
from typing import Dict

from attrs import define, field
from twisted.internet.defer import Deferred, succeed

from keda_proxy.store import Snapshot, StateStore


@define
class ReadinessGate:
    """Per-Service waiting lists, woken by snapshot swaps.

    C{wait} fires with C{True} ("this was a cold start") when it had to
    wait, C{False} when the Service was already ready.

    Woken requests are released C{batch} per reactor turn, oldest first:
    releasing thousands in one turn would hold every response back until
    the last request had been dialled, and would make connect timeouts
    fire on connections that completed long before the turn ended.
    """

    store: StateStore
    batch: int = 32
    _waiters: Dict[str, Dict[int, Deferred]] = field(factory=dict)
    _next_id: int = 0
    _releasing: deque = field(factory=deque)
    _release_call: object = None

    def __attrs_post_init__(self):
        self.store.subscribe(self._snapshot_changed)

    def is_ready(self, service_key: str) -> bool:
        return self.store.current.endpoints_for(service_key).ready

    def wait(self, service_key: str) -> Deferred:
        if self.is_ready(service_key):
            return succeed(False)
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
        waiters[wid] = d
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
            d = queue.popleft()
            if not d.called:  # a wait cancelled after waking is skipped
                d.callback(True)
        if queue and self._release_call is None:
            self._release_call = self.store.clock.callLater(0, self._release)
