"""
Per-route pending-request counts: what KEDA's scaler reads from ``/queue``.

``Concurrency`` is the number of requests in flight for a route and
``RequestCount`` the number ever started; both are kept per
``namespace/name`` key.  The key set follows the routing snapshot: every
known route is present (at zero when idle) and a removed route disappears.

A request in flight stays counted under its key.  When a route is removed
while requests are still in flight for it (held during a cold start, or
still streaming), its L{Count} is put aside rather than dropped: it is not
listed while the route is absent, and if the route comes back under the
same key before those requests end, the same L{Count} is listed again, so
``Concurrency`` includes them and ``RequestCount`` carries on.  A put-aside
L{Count} is forgotten as soon as its last request ends, so routes that
never come back cost nothing.
"""

from __future__ import annotations

from typing import Dict, Iterable

from attrs import define, field


@define(slots=True, eq=False)
class Count:
    """One route's counters.  Mutated only on the reactor thread."""

    concurrency: int = 0
    request_count: int = 0


@define(slots=True)
class Ticket:
    """Proof that one request was counted in; C{release} counts it out once.

    Holding the L{Count} itself (not the key) means the request is counted
    out of the L{Count} it was counted into, whatever happened to the route
    in between: it cannot drive a newer L{Count} negative.
    """

    _count: Count
    _counter: "QueueCounter"
    _key: str
    _released: bool = False

    def release(self, gone: bool = False) -> None:
        """Count the request out (once); also the cleanup
        L{keda_proxy.steps.RequestContext.on_end} calls, with C{gone}."""
        if not self._released:
            self._released = True
            self._count.concurrency -= 1
            if self._count.concurrency <= 0:
                self._counter._idle(self._key, self._count)


@define
class QueueCounter:
    #: the listed keys: what ``/queue`` shows.
    _counts: Dict[str, Count] = field(factory=dict)
    #: counts of removed keys that still have requests in flight, kept to
    #: be listed again if their key comes back; dropped when they reach 0.
    _absent: Dict[str, Count] = field(factory=dict)

    def sync_keys(self, keys: Iterable[str]) -> None:
        """Make the listed key set exactly C{keys}, keeping existing counts.

        A removed key whose requests are still in flight keeps its L{Count}
        aside; a key that comes back gets that L{Count} again.
        """
        keys = set(keys)
        for gone in self._counts.keys() - keys:
            count = self._counts.pop(gone)
            if count.concurrency > 0:
                self._absent[gone] = count
        for key in keys:
            if key not in self._counts:
                self._counts[key] = self._absent.pop(key, None) or Count()

    def enter(self, key: str) -> Ticket:
        """Count a request in.  An unknown key is listed from now on (a
        plugin may route to a key that is not in the table yet), with the
        L{Count} it had if it was removed with requests still in flight."""
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = self._absent.pop(key, None) or Count()
        count.concurrency += 1
        count.request_count += 1
        return Ticket(count, self, key)

    def _idle(self, key: str, count: Count) -> None:
        """C{count}'s last request ended: forget it if it is put aside."""
        if self._absent.get(key) is count:
            del self._absent[key]

    def get(self, key: str) -> Count:
        """The listed L{Count} of C{key} (a fresh zero one if unlisted)."""
        return self._counts.get(key, Count())

    def in_flight(self) -> int:
        """Requests in flight, including those of removed routes."""
        return (sum(c.concurrency for c in self._counts.values())
                + sum(c.concurrency for c in self._absent.values()))

    def as_json_dict(self) -> dict:
        """The ``/queue`` body: ``{key: {"Concurrency": n, "RequestCount": m}}``."""
        return {
            key: {"Concurrency": c.concurrency, "RequestCount": c.request_count}
            for key, c in sorted(self._counts.items())
        }
