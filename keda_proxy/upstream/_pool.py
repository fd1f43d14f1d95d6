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

HTTP/2 connections (L{keda_proxy.upstream._http2client}: an ``h2c`` key, or
an ``https`` one whose upstream chose ``h2`` by ALPN) carry many requests
at once.  The pool keeps every one that takes new streams, per key; a
request gets a new stream on the oldest with room (the upstream's
C{SETTINGS_MAX_CONCURRENT_STREAMS} tells how much), and another
connection is dialled only when all are full.  Requests that find none
while one is being dialled for an ``h2c`` key wait for that one (up to
what it is assumed to take) instead of dialling their own.  A connection
with no stream closes after C{idle_timeout}; the idle bounds do not apply
to them.  An ``https`` dial hands its connection over only once the TLS
handshake is done, when ALPN has decided (L{keda_proxy.upstream._alpn}).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from keda_proxy._tls import ALPN_H2
from keda_proxy.interfaces import IConnectionOwner
from keda_proxy.state._endpoints import join_host_port
from keda_proxy.upstream._alpn import ALPNSwitch
from keda_proxy.upstream._http1client import UpstreamConnection
from keda_proxy.upstream._http2client import ASSUMED_MAX_STREAMS, H2ClientConnection
from keda_proxy.upstream._schemes import H2C, HTTPS

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


@implementer(IConnectionOwner)
class _H2Owner:
    """Binds HTTP/2 connections, and their streams, to their key in the
    pool: a stream given back unused frees its place; a connection that
    takes no new stream (gone, or after a GOAWAY) leaves the pool; one
    with no stream left has its idle time counted."""

    def __init__(self, pool: "ConnectionPool", key: PoolKey):
        self.pool = pool
        self.key = key

    def connection_reusable(self, stream):
        stream.release()

    def connection_lost(self, connection):
        self.pool._forget_h2(self.key, connection)

    def connection_idle(self, connection):
        self.pool._ensure_sweeper()


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


def _authority(key: PoolKey) -> bytes:
    """C{:authority} for an HTTP/2 request that came without a Host."""
    return join_host_port(key[1], key[2]).encode("idna")


class _H2Factory(Factory):
    noisy = False

    def __init__(self, clock, owner, key: PoolKey):
        self.clock = clock
        self.owner = owner
        self.key = key

    def buildProtocol(self, addr):
        conn = H2ClientConnection(self.clock, b"http", _authority(self.key))
        conn.owner = self.owner
        return conn


class _NegotiatingFactory(Factory):
    """For an https key: an L{ALPNSwitch}, which speaks HTTP/2 or
    HTTP/1.1 as the handshake decides."""

    noisy = False

    def __init__(self, pool: "ConnectionPool", key: PoolKey):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):
        return ALPNSwitch(self.choose)

    def choose(self, protocol):
        pool, key = self.pool, self.key
        if protocol == ALPN_H2:
            conn = H2ClientConnection(pool.clock, b"https", _authority(key))
            conn.owner = pool._h2_owner(key)
        else:
            conn = UpstreamConnection(pool.clock)
            conn.owner = pool._owner(key)
        return conn


class _H2Dial:
    """An HTTP/2 connection being dialled, and the requests waiting for a
    stream on it (up to L{ASSUMED_MAX_STREAMS}); cancelling them all
    stops the dial."""

    dial = None

    def __init__(self, pool: "ConnectionPool", key: PoolKey):
        self.pool = pool
        self.key = key
        self.waiters: list = []

    @property
    def full(self) -> bool:
        return len(self.waiters) >= ASSUMED_MAX_STREAMS

    def join(self) -> Deferred:
        d = Deferred(self._leave)
        self.waiters.append(d)
        return d

    def start(self, dial: Deferred) -> None:
        self.dial = dial
        dial.addCallbacks(self._connected, self._failed)

    def _leave(self, d: Deferred) -> None:
        self.waiters.remove(d)
        if not self.waiters and self.dial is not None and not self.dial.called:
            self.dial.cancel()

    def _done(self) -> list:
        if self.pool._h2_dials.get(self.key) is self:
            del self.pool._h2_dials[self.key]
        waiters, self.waiters = self.waiters, []
        return waiters

    def _connected(self, conn) -> None:
        waiters = self._done()
        self.pool._add_h2(self.key, conn)
        for d in waiters:
            d.callback(conn.new_stream())

    def _failed(self, f) -> None:
        for d in self._done():
            d.errback(f)


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
    #: HTTP/2 connections that take new streams, oldest first, per key
    _h2: Dict[PoolKey, List[H2ClientConnection]] = field(factory=dict)
    _h2_owners: Dict[PoolKey, _H2Owner] = field(factory=dict)
    #: the h2c dial that requests for a key may wait for
    _h2_dials: Dict[PoolKey, _H2Dial] = field(factory=dict)

    def __attrs_post_init__(self):
        if self.max_idle_per_host <= 0:
            self.max_idle_per_host = GO_DEFAULT_MAX_IDLE_PER_HOST

    def take_idle(self, key: PoolKey, has_body: bool = False):
        """A pooled connection for C{key} that is safe for this request, or
        None.  Synchronous: the common case costs no Deferred."""
        idle = self._idle.get(key)
        if not idle:
            return self._h2_stream(key, has_body) if self._h2 else None
        while idle:
            conn = idle.pop()
            self._idle_order.pop(conn, None)
            if not conn.usable:
                continue
            if has_body and self.clock.seconds() - conn.idle_since >= FRESH_ENOUGH:
                self._close(conn)
                continue
            return conn
        return self._h2_stream(key, has_body) if self._h2 else None

    def _h2_stream(self, key: PoolKey, has_body: bool):
        """A new stream on the oldest HTTP/2 connection for C{key} with
        room, or None.  A request with a body does not go to a connection
        that has had no stream for L{FRESH_ENOUGH}, as on HTTP/1.1: that
        one is closed."""
        conns = self._h2.get(key)
        if not conns:
            return None
        now = self.clock.seconds()
        for conn in list(conns):
            if conn.room() <= 0:
                continue
            if has_body and conn.allocated == 0 and now - conn.idle_since >= FRESH_ENOUGH:
                self._forget_h2(key, conn)
                conn.close()
                continue
            return conn.new_stream()
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
        """Dial a new connection for C{key}, bypassing idle ones.

        The Deferred fires with an exchange: an L{UpstreamConnection}, or
        a stream of a new HTTP/2 connection (an h2c key; an https key
        whose upstream chose h2), which may be one being dialled already.
        """
        scheme = key[0]
        if scheme == H2C:
            return self._connect_h2c(key, dial_budget)
        if scheme == HTTPS:
            return self._connect_negotiated(key, dial_budget)
        endpoint = self.endpoint_for(key, dial_budget)
        return endpoint.connect(_ConnectionFactory(self.clock, self._owner(key)))

    def _owner(self, key: PoolKey) -> _Owner:
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(self, key)
        return owner

    def _h2_owner(self, key: PoolKey) -> _H2Owner:
        owner = self._h2_owners.get(key)
        if owner is None:
            owner = self._h2_owners[key] = _H2Owner(self, key)
        return owner

    def _connect_h2c(self, key: PoolKey, dial_budget: float) -> Deferred:
        pending = self._h2_dials.get(key)
        if pending is not None and not pending.full:
            return pending.join()
        pending = self._h2_dials[key] = _H2Dial(self, key)
        d = pending.join()
        endpoint = self.endpoint_for(key, dial_budget)
        pending.start(endpoint.connect(_H2Factory(self.clock, self._h2_owner(key), key)))
        return d

    def _connect_negotiated(self, key: PoolKey, dial_budget: float) -> Deferred:
        endpoint = self.endpoint_for(key, dial_budget)
        d = endpoint.connect(_NegotiatingFactory(self, key))
        d.addCallback(lambda switch: switch.negotiated)
        d.addCallback(self._negotiated, key)
        return d

    def _negotiated(self, conn, key: PoolKey):
        if isinstance(conn, H2ClientConnection):
            self._add_h2(key, conn)
            return conn.new_stream()
        return conn

    def _add_h2(self, key: PoolKey, conn: H2ClientConnection) -> None:
        if conn.usable:
            self._h2.setdefault(key, []).append(conn)

    def _forget_h2(self, key: PoolKey, conn: H2ClientConnection) -> None:
        conns = self._h2.get(key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._h2[key]

    def put_idle(self, conn) -> None:
        """Keep a new connection from L{connect} that no request used (for
        an HTTP/2 stream: give its place back)."""
        if conn.owner is not None:
            conn.owner.connection_reusable(conn)

    def spare(self, key: PoolKey) -> int:
        """How many requests for C{key} could go out now without a dial:
        the idle HTTP/1.1 connections, plus the room on HTTP/2 ones."""
        spare = len(self._idle.get(key, ()))
        if self._h2:
            spare += sum(conn.room() for conn in self._h2.get(key, ()))
        return spare

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
        if self._sweeper is None:
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
        idle_h2 = self._sweep_h2(cutoff) if self._h2 else False
        if not self._idle_order and not idle_h2 and self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def _sweep_h2(self, cutoff: float) -> bool:
        """Close the HTTP/2 connections that have had no stream since
        C{cutoff}; whether any other is without a stream."""
        idle_left = False
        for key, conns in list(self._h2.items()):
            for conn in list(conns):
                if not conn.idle:
                    continue
                if conn.idle_since <= cutoff:
                    self._forget_h2(key, conn)
                    conn.close()
                else:
                    idle_left = True
        return idle_left

    def idle_count(self, key: PoolKey = None) -> int:
        """Idle connections: HTTP/1.1 ones in the pool, and HTTP/2 ones
        without a stream."""
        if key is not None:
            count = len(self._idle.get(key, ()))
            if self._h2:
                count += sum(1 for conn in self._h2.get(key, ()) if conn.idle)
            return count
        count = len(self._idle_order)
        if self._h2:
            count += sum(1 for conns in self._h2.values() for conn in conns if conn.idle)
        return count

    def close_idle(self) -> None:
        """Close every idle connection (at shutdown); HTTP/2 ones with
        streams under way close after their last one."""
        while self._idle_order:
            conn, key = self._idle_order.popitem(last=False)
            self._close(conn)
        self._idle.clear()
        self._over.clear()
        for conns in list(self._h2.values()):
            for conn in list(conns):
                conn.close()
        self._h2.clear()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._trimmer is not None:
            if self._trimmer.active():
                self._trimmer.cancel()
            self._trimmer = None
