"""
The upstream connection pool.

Connections are keyed by ``(scheme, host, port, server_name)``: the address
actually dialled (a Service name or a pod IP), and the TLS name verified on
it, so a pod reached for two Services never shares a TLS session across
identities.  Idle connections are reused newest-first, bounded per key
(``KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST``) and in total
(``KEDA_HTTP_MAX_IDLE_CONNS``), and closed after ``idle_timeout``.

The bounds apply to connections that stay idle: one returned above a bound
is kept for L{EXCESS_GRACE} more, and closed (oldest first) only if it is
still surplus then.  Under load, more requests are in flight than the
bound: a turn of the reactor can bring hundreds of responses back at once,
and the next turn sends as many requests again.  Closing the connections
above the bound as they came back (as Go's transport does, though it first
hands each to a request waiting for one) made the next turn's requests dial
again, a handshake and at least one more turn each: at 1,024 client
connections one request in ten waited for a new connection (see
docs/performance.md, "Latency under bursts").

A connection that the upstream closed while idle is dropped from the pool
by its own ``connectionLost``; the remaining risk is a close racing with
reuse.  Requests with a body never take that risk: they only reuse a
connection that was busy within the last L{FRESH_ENOUGH} seconds, and
otherwise dial a new one, because a body that is streaming cannot be
replayed.  Body-less requests may be retried once (see the proxy).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from keda_proxy.interfaces import IConnectionOwner
from keda_proxy.upstream._http1client import UpstreamConnection

#: A connection idle for less than this may carry a request body.
FRESH_ENOUGH = 1.0
#: How long a connection returned above an idle bound is kept: connections
#: that all came back in one burst are wanted again by the next one.
EXCESS_GRACE = 1.0
#: Go's C{http.DefaultMaxIdleConnsPerHost}, used when the setting is 0.
GO_DEFAULT_MAX_IDLE_PER_HOST = 2

PoolKey = Tuple[bytes, str, int, str]


@implementer(IConnectionOwner)
class _Owner:
    """Binds a connection to its key in the pool."""

    def __init__(self, pool: "ConnectionPool", key: PoolKey):
        self.pool = pool
        self.key = key

    def connection_reusable(self, connection):
        self.pool._release(self.key, connection)

    def connection_lost(self, connection):
        self.pool._forget(self.key, connection)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, clock, owner):
        self.clock = clock
        self.owner = owner

    def buildProtocol(self, addr):
        conn = UpstreamConnection(self.clock)
        conn.owner = self.owner
        conn.factory = self
        return conn


@define
class ConnectionPool:
    """
    @ivar endpoint_for: C{endpoint_for(key, dial_budget)} returns the
        C{IStreamClientEndpoint} to dial for a key (see L{keda_proxy.upstream._dial}).
    """

    clock: object
    endpoint_for: object
    #: 0 means no limit, as Go's C{MaxIdleConns}
    max_idle: int = 1000
    #: 0 means 2, as Go's C{MaxIdleConnsPerHost}
    max_idle_per_host: int = 200
    idle_timeout: float = 90.0
    #: see L{EXCESS_GRACE}; 0 closes a connection above a bound at once
    excess_grace: float = EXCESS_GRACE
    _idle: Dict[PoolKey, List[UpstreamConnection]] = field(factory=dict)
    #: every idle connection, oldest first, for the total bound and expiry
    _idle_order: "OrderedDict[UpstreamConnection, PoolKey]" = field(factory=OrderedDict)
    _owners: Dict[PoolKey, _Owner] = field(factory=dict)
    _sweeper: object = None
    #: keys holding more idle connections than the per-key bound
    _over: set = field(factory=set)
    _trimmer: object = None

    def __attrs_post_init__(self):
        if self.max_idle_per_host <= 0:
            self.max_idle_per_host = GO_DEFAULT_MAX_IDLE_PER_HOST

    def take_idle(self, key: PoolKey, has_body: bool = False):
        """A pooled connection for C{key} that is safe for this request, or
        None.  Synchronous: the common case costs no Deferred."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = self.clock.seconds()
        while idle:
            conn = idle.pop()
            self._idle_order.pop(conn, None)
            if not conn.usable:
                continue
            if has_body and now - conn.idle_since >= FRESH_ENOUGH:
                self._close(conn)
                continue
            return conn
        return None

    def acquire(self, key: PoolKey, dial_budget: float, has_body: bool = False) -> Deferred:
        """A connection for C{key}: a pooled one if suitable, else a new one.

        The Deferred fires with an idle L{UpstreamConnection}; cancelling it
        stops the dial.
        """
        conn = self.take_idle(key, has_body)
        if conn is not None:
            return succeed(conn)
        return self.connect(key, dial_budget)

    def connect(self, key: PoolKey, dial_budget: float) -> Deferred:
        """Dial a new connection for C{key}, bypassing idle ones."""
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(self, key)
        endpoint = self.endpoint_for(key, dial_budget)
        return endpoint.connect(_ConnectionFactory(self.clock, owner))

    def put_idle(self, conn: UpstreamConnection) -> None:
        """Keep a new connection from L{connect} that no request used."""
        if conn.owner is not None:
            self._release(conn.owner.key, conn)

    def _release(self, key: PoolKey, conn: UpstreamConnection) -> None:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        idle.append(conn)
        self._idle_order[conn] = key
        if len(idle) > self.max_idle_per_host:
            self._over.add(key)
            self._trim_later()
        elif len(self._idle_order) > self.max_idle > 0:
            self._trim_later()
        self._ensure_sweeper()

    def _trim_later(self, delay: float = None) -> None:
        if self.excess_grace <= 0:
            self.trim()
        elif self._trimmer is None:
            self._trimmer = self.clock.callLater(
                self.excess_grace if delay is None else delay, self.trim)

    def trim(self) -> None:
        """Close the connections above the idle bounds that have been idle
        for L{excess_grace} (oldest first); look again when the oldest of
        the rest will have been."""
        self._trimmer = None
        now = self.clock.seconds()
        cutoff = now - self.excess_grace
        bound = self.max_idle_per_host
        for key in list(self._over):
            idle = self._idle.get(key)
            excess = len(idle) - bound if idle else 0
            while excess > 0 and idle[0].idle_since <= cutoff:
                conn = idle.pop(0)
                del self._idle_order[conn]
                self._close(conn)
                excess -= 1
            if excess <= 0:
                self._over.discard(key)
                if idle is not None and not idle:
                    del self._idle[key]
        order = self._idle_order
        while len(order) > self.max_idle > 0:
            conn, key = next(iter(order.items()))
            if conn.idle_since > cutoff:
                break
            order.popitem(last=False)
            idle = self._idle[key]
            idle.remove(conn)
            if not idle:
                del self._idle[key]
                self._over.discard(key)
            self._close(conn)
        if self.excess_grace <= 0:
            return
        oldest = [self._idle[key][0].idle_since for key in self._over]
        if len(order) > self.max_idle > 0:
            oldest.append(next(iter(order)).idle_since)
        if oldest:
            self._trim_later(max(min(oldest) - cutoff, 0.01))

    def _forget(self, key: PoolKey, conn: UpstreamConnection) -> None:
        if self._idle_order.pop(conn, None) is not None:
            idle = self._idle.get(key)
            if idle is not None and conn in idle:
                idle.remove(conn)
                if not idle:
                    del self._idle[key]

    def _close(self, conn: UpstreamConnection) -> None:
        conn.owner = None
        if conn.transport is not None:
            conn.transport.loseConnection()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(max(self.idle_timeout / 4, 0.05), now=False)

    def sweep(self) -> None:
        """Close connections idle for longer than C{idle_timeout}."""
        cutoff = self.clock.seconds() - self.idle_timeout
        while self._idle_order:
            conn, key = next(iter(self._idle_order.items()))
            if conn.idle_since > cutoff:
                break
            self._idle_order.popitem(last=False)
            self._idle[key].remove(conn)
            if not self._idle[key]:
                del self._idle[key]
            self._close(conn)
        if not self._idle_order and self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def idle_count(self, key: PoolKey = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return len(self._idle_order)

    def close_idle(self) -> None:
        """Close every idle connection (at shutdown)."""
        while self._idle_order:
            conn, key = self._idle_order.popitem(last=False)
            self._close(conn)
        self._idle.clear()
        self._over.clear()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._trimmer is not None:
            if self._trimmer.active():
                self._trimmer.cancel()
            self._trimmer = None
