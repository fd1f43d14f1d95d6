"""
Per-route pending-request counts: what KEDA's scaler reads from ``/queue``.

``Concurrency`` is the number of requests in flight for a route and
``RequestCount`` the number ever started; both are kept per
``namespace/name`` key.  The key set follows the routing snapshot: every
known route is present (at zero when idle) and a removed route disappears.
"""

from __future__ import annotations

from typing import Dict, Iterable

from attrs import define, field


@define(slots=True)
class Count:
    """One route's counters.  Mutated only on the reactor thread."""

    concurrency: int = 0
    request_count: int = 0


@define(slots=True)
class Ticket:
    """Proof that one request was counted in; C{release} counts it out once.

    Holding the L{Count} itself (not the key) means a route removed while a
    request is in flight cannot be driven negative, and a route re-created
    under the same key starts clean.
    """

    _count: Count
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._count.concurrency -= 1


@define
class QueueCounter:
    _counts: Dict[str, Count] = field(factory=dict)

    def sync_keys(self, keys: Iterable[str]) -> None:
        """Make the key set exactly C{keys}, keeping existing counts."""
        keys = set(keys)
        for gone in self._counts.keys() - keys:
            del self._counts[gone]
        for key in keys:
            if key not in self._counts:
                self._counts[key] = Count()

    def enter(self, key: str) -> Ticket:
        """Count a request in.  An unknown key is created (a plugin may
        route to a key that is not in the table yet)."""
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = Count()
        count.concurrency += 1
        count.request_count += 1
        return Ticket(count)

    def get(self, key: str) -> Count:
        return self._counts.get(key, Count())

    def as_json_dict(self) -> dict:
        """The ``/queue`` body: ``{key: {"Concurrency": n, "RequestCount": m}}``."""
        return {
            key: {"Concurrency": c.concurrency, "RequestCount": c.request_count}
            for key, c in sorted(self._counts.items())
        }
