"""
Opening pod connections while requests are held for a cold Service.

After a scale-from-zero the new pod is listed in the EndpointSlice, not
ready, from the moment it has an address, and it usually listens well
before its readiness probe passes (the probe runs every 10 s by default).
With direct-pod routing, while requests are held for a Service, the
L{PodWarmer} opens connections to its starting pods (TCP, plus the TLS
handshake with the Service's name when upstreams are TLS) and leaves them
idle in the pool.  Nothing is sent on them until the pod is ready; then the
release finds them open, instead of dialling first: dials are a large part
of a release's work, and TLS handshakes by far the largest.

Per starting pod and port it keeps up to C{per_pod} connections open or
opening (no more than requests are held, nor than the pool keeps idle),
once one connection has stayed open for an C{interval}; until then, and
whenever a dial fails or a connection closes unused (the pod is not
listening yet, or fails the TLS handshake), it dials once per interval.
It stops when nothing is held any more or the Service is ready;
connections left over age out of the pool like any other.

An HTTP/2 connection (h2c, or TLS where the pod chose h2) takes many
requests at once: its room counts as that many connections, so one
usually does.

Off unless ``KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS`` is set: a server that
gives each connection one of a few workers (gunicorn's sync workers) would
have them wait on connections that carry no request.
"""

from __future__ import annotations

from itertools import islice
from typing import Dict

from attrs import define, field

from keda_proxy.state._store import StateStore
from keda_proxy.steps._readiness import ReadinessGate
from keda_proxy.upstream._http1client import CLOSED
from keda_proxy.upstream._pool import ConnectionPool, PoolKey


@define
class PodWarmer:
    """Keeps connections to starting pods open while requests are held.

    @ivar per_pod: connections per starting pod and port; 0 turns it off.
    """

    clock: object
    store: StateStore
    gate: ReadinessGate
    pool: ConnectionPool
    per_pod: int = 64
    interval: float = 0.1
    #: dials under way, per pool key
    _dialing: Dict[PoolKey, int] = field(factory=dict)
    #: C{(connection, when opened)} per key, until a request uses it
    _opened: Dict[PoolKey, list] = field(factory=dict)
    #: keys where a connection has stayed open, unused, for an interval:
    #: only these are filled up; any other gets one dial at a time (a pod
    #: not listening yet, or failing the TLS handshake, is not flooded)
    _proven: set = field(factory=set)
    _timer: object = None
    _stopped: bool = False

    def __attrs_post_init__(self):
        if self.per_pod > 0:
            self.gate.hold_listeners.append(self._held)
            self.store.subscribe(self._snapshot_changed)

    def stop(self) -> None:
        """No more dials (at shutdown); those under way still finish."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _snapshot_changed(self, old, new) -> None:
        if old.endpoints is not new.endpoints:
            self._warm_all()

    def _tick(self) -> None:
        self._timer = None
        self._warm_all()

    def _held(self, service_key: str, held: int) -> None:
        """One more request held: the first starts warming its Service at
        once; the periodic pass adds connections as more are held."""
        if held == 1 and self._warm(service_key):
            self._schedule()

    def _warm_all(self) -> None:
        live = set()
        for service_key in self.gate.held_services():
            live |= self._warm(service_key)
        self._proven &= live
        for key in self._opened.keys() - live:
            del self._opened[key]
        if live:
            # again soon: a pod not proven yet gets its next try, and
            # connections the pod closed meanwhile are opened again
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _warm(self, service_key: str) -> set:
        """Dial what is missing for one Service; the pool keys of its
        starting pods."""
        holds = self.gate.holds(service_key)
        eps = self.store.current.endpoints_for(service_key)
        if self._stopped or not holds or eps.ready or not eps.starting:
            return set()
        # within the pool's bounds: connections it would close at once
        # would only be opened again on the next pass
        most = min(len(holds), self.per_pod, self.pool.max_idle_per_host)
        room = None  # no total bound (max_idle 0)
        if self.pool.max_idle > 0:
            room = self.pool.max_idle - self.pool.idle_count() - sum(self._dialing.values())
        # every request held for a Service normally wants the same: asked
        # here, only when warming, rather than of every request held
        specs = set()
        for h in islice(holds, 64):
            spec = h.waiter.pod_connection()
            if spec is not None:
                specs.add((h.port_name, spec))
        keys = set()
        for port_name, (scheme, server_name) in specs:
            for ip, port in eps.starting.get(port_name, ()):
                key = (scheme, ip, port, server_name)
                keys.add(key)
                self._check_opened(key)
                want = most if key in self._proven else 1
                missing = want - self.pool.spare(key) - self._dialing.get(key, 0)
                if room is not None:
                    missing = min(missing, room)
                    room -= max(missing, 0)
                for _ in range(missing):
                    self._dial(key)
        return keys

    def _check_opened(self, key: PoolKey) -> None:
        """Forget the connections requests took; judge the pod by the rest."""
        opened = self._opened.get(key)
        if not opened:
            return
        unused = [(c, at) for c, at in opened if c.uses == 0]
        alive = [(c, at) for c, at in unused if c.state != CLOSED]
        if len(alive) < len(unused):
            self._proven.discard(key)  # closed before anyone used them
        elif any(at <= self.clock.seconds() - self.interval for _, at in alive):
            self._proven.add(key)
        opened[:] = alive

    def _dial(self, key: PoolKey) -> None:
        self._dialing[key] = self._dialing.get(key, 0) + 1
        d = self.pool.connect(key, 0.0)  # one attempt; the next pass retries
        d.addCallbacks(self._connected, self._failed, callbackArgs=(key,),
                       errbackArgs=(key,))

    def _dialled(self, key: PoolKey) -> None:
        left = self._dialing[key] - 1
        if left:
            self._dialing[key] = left
        else:
            del self._dialing[key]

    def _connected(self, conn, key: PoolKey) -> None:
        self._dialled(key)
        self._opened.setdefault(key, []).append((conn, self.clock.seconds()))
        self.pool.put_idle(conn)

    def _failed(self, f, key: PoolKey) -> None:
        self._dialled(key)
        self._proven.discard(key)
