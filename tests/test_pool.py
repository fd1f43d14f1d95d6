"""Tests for keda_proxy.upstream._pool and the dialling in keda_proxy.upstream._dial."""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from keda_proxy.upstream._dial import RetryingEndpoint, SnapshotResolver, UpstreamEndpoints
from keda_proxy.upstream._http1client import UpstreamConnection
from keda_proxy.upstream._pool import EXCESS_GRACE, FRESH_ENOUGH, ConnectionPool
from tests.builders import load, service

KEY = (b"http", "web.default", 8080, "web.default")
OTHER = (b"http", "api.default", 8080, "api.default")


class Dialler:
    """endpoint_for that connects at once over StringTransports."""

    def __init__(self, clock):
        self.clock = clock
        self.dials = []

    def endpoint_for(self, key, budget):
        dialler = self

        class _Endpoint:
            def connect(self, factory):
                proto = factory.buildProtocol(None)
                proto.makeConnection(StringTransport())
                dialler.dials.append(key)
                return succeed(proto)

        return _Endpoint()


def finished_exchange(conn: UpstreamConnection):
    """Run one request/response on C{conn} so it returns to its pool."""
    class Sink:
        def response_head(self, *a):
            pass

        def response_data(self, data):
            pass

        def response_done(self, trailers=None):
            pass

    conn.send(b"GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Sink())
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def pooled(pool, key, n):
    conns = [pool.acquire(key, 1).result for _ in range(n)]
    for c in conns:
        finished_exchange(c)
    return conns


def test_idle_connections_are_reused_newest_first():
    clock = Clock()
    d = Dialler(clock)
    pool = ConnectionPool(clock, d.endpoint_for)
    a, b = pooled(pool, KEY, 2)
    assert pool.idle_count(KEY) == 2
    assert pool.take_idle(KEY) is b
    assert pool.take_idle(KEY) is a
    assert pool.take_idle(KEY) is None
    assert len(d.dials) == 2


def test_zero_bounds_mean_what_they_mean_in_go():
    """MaxIdleConns 0: no total bound; MaxIdleConnsPerHost 0: Go's default, 2."""
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, max_idle=0, max_idle_per_host=0)
    conns = pooled(pool, KEY, 3)
    clock.advance(EXCESS_GRACE)
    assert pool.idle_count(KEY) == 2 and conns[0].transport.disconnecting
    for i in range(5):
        pooled(pool, (b"http", f"10.0.0.{i}", 80, ""), 2)
    clock.advance(EXCESS_GRACE)
    assert pool.idle_count() == 12  # nothing closed to keep a total


def test_idle_connections_are_bounded_per_host_and_in_total():
    """Connections above a bound are closed, longest idle first, once they
    have stayed idle for EXCESS_GRACE."""
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, max_idle=3, max_idle_per_host=2)
    conns = pooled(pool, KEY, 3)
    assert pool.idle_count(KEY) == 3  # came back together: kept for the grace
    clock.advance(EXCESS_GRACE)
    assert pool.idle_count(KEY) == 2
    assert [c.transport.disconnecting for c in conns] == [True, False, False]
    others = pooled(pool, OTHER, 2)
    assert pool.idle_count() == 4
    clock.advance(EXCESS_GRACE)
    assert pool.idle_count() == 3
    assert conns[1].transport.disconnecting  # the oldest went to keep the total
    assert not conns[2].transport.disconnecting
    assert not any(c.transport.disconnecting for c in others)


def test_idle_connections_expire():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for, idle_timeout=90)
    [conn] = pooled(pool, KEY, 1)
    clock.advance(60)
    assert pool.idle_count() == 1
    clock.advance(60)
    assert pool.idle_count() == 0
    assert conn.transport.disconnecting


def test_a_connection_closed_while_idle_leaves_the_pool():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for)
    [conn] = pooled(pool, KEY, 1)
    conn.connectionLost()
    assert pool.idle_count() == 0
    assert pool.take_idle(KEY) is None


def test_requests_with_a_body_only_take_recently_used_connections():
    clock = Clock()
    pool = ConnectionPool(clock, Dialler(clock).endpoint_for)
    [conn] = pooled(pool, KEY, 1)
    clock.advance(FRESH_ENOUGH / 2)
    assert pool.take_idle(KEY, has_body=True) is conn
    finished_exchange(conn)
    clock.advance(FRESH_ENOUGH)
    assert pool.take_idle(KEY, has_body=True) is None
    assert conn.transport.disconnecting


def test_dial_is_retried_every_50ms_until_it_connects():
    clock = Clock()
    attempts = []

    class Ep:
        def connect(self, factory):
            attempts.append(clock.seconds())
            if len(attempts) < 3:
                return fail(ConnectionRefusedError())
            return succeed("proto")

    d = RetryingEndpoint(Ep, clock, budget=60).connect(None)
    clock.pump([0.05] * 3)
    assert d.result == "proto"
    assert attempts == [0, 0.05, 0.1]


def test_dial_gives_up_with_the_last_error_when_the_budget_is_spent():
    clock = Clock()

    class Ep:
        def connect(self, factory):
            return fail(ConnectionRefusedError())

    d = RetryingEndpoint(Ep, clock, budget=0.2).connect(None)
    errors = []
    d.addErrback(errors.append)
    clock.pump([0.05] * 10)
    assert errors and errors[0].check(ConnectionRefusedError)


def test_cancelling_a_dial_stops_the_attempt_and_the_retries():
    clock = Clock()
    pending = []

    class Ep:
        def connect(self, factory):
            d = Deferred(lambda d: pending.append("cancelled"))
            return d

    d = RetryingEndpoint(Ep, clock, budget=60).connect(None)
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert pending == ["cancelled"]
    assert clock.getDelayedCalls() == []


def test_service_names_resolve_to_the_cluster_ip_and_ip_literals_skip_dns():
    from twisted.internet.testing import MemoryReactorClock

    from keda_proxy.state._store import StateStore

    reactor = MemoryReactorClock()
    store = StateStore(clock=reactor)
    load(store, services=[service(cluster_ip="10.96.0.7"),
                          service(name="headless", cluster_ip="None")])
    resolver = SnapshotResolver(store)
    assert resolver.resolve("web.default") == "10.96.0.7"
    assert resolver.resolve("web.default.svc.cluster.local") == "10.96.0.7"
    assert resolver.resolve("headless.default") is None  # left to DNS
    endpoints = UpstreamEndpoints(reactor, resolver)
    endpoints.endpoint_for((b"http", "web.default", 8080, "web.default"), 1).connect(None)
    endpoints.endpoint_for((b"http", "fd00::1", 8080, "web.default"), 1).connect(None)
    hosts = [c[0] for c in reactor.tcpClients]
    assert hosts == ["10.96.0.7", "fd00::1"]


def test_a_pod_endpoint_is_made_once_and_a_service_name_resolved_every_time():
    from twisted.internet.testing import MemoryReactorClock

    from keda_proxy.state._store import StateStore

    reactor = MemoryReactorClock()
    store = StateStore(clock=reactor)
    load(store, services=[service(cluster_ip="10.96.0.7")])
    endpoints = UpstreamEndpoints(reactor, SnapshotResolver(store))
    pod = (b"http", "10.0.0.5", 8080, "web.default")
    assert endpoints.endpoint_for(pod, 0) is endpoints.endpoint_for(pod, 0)
    name = (b"http", "web.default", 8080, "web.default")
    endpoints.endpoint_for(name, 0).connect(None)
    load(store, services=[service(cluster_ip="10.96.0.8")])  # the Service is recreated
    endpoints.endpoint_for(name, 0).connect(None)
    assert [c[0] for c in reactor.tcpClients] == ["10.96.0.7", "10.96.0.8"]


def test_a_refusing_address_is_probed_by_one_request_at_a_time():
    from keda_proxy.upstream._dial import DialGate

    clock = Clock()
    gate = DialGate(clock)
    up = {"now": False}
    dials = []

    class Ep:
        def connect(self, factory):
            dials.append(clock.seconds())
            return succeed("proto") if up["now"] else fail(ConnectionRefusedError())

    results = [RetryingEndpoint(Ep, clock, 60, gate, ("10.0.0.1", 80)).connect(None)
               for _ in range(100)]
    # the first wave: each request tried once before the address was known to refuse
    first_wave = len(dials)
    for _ in range(10):
        clock.advance(0.05)
    assert len(dials) - first_wave == 10  # one probe per 50 ms, not 100
    up["now"] = True
    clock.advance(0.05)  # the probe succeeds: everyone else dials at once
    assert all(r.called and r.result == "proto" for r in results)
    assert not gate.refusing(("10.0.0.1", 80))


def test_a_request_that_leaves_stops_waiting_for_its_turn():
    from keda_proxy.upstream._dial import DialGate

    clock = Clock()
    gate = DialGate(clock)

    class Ep:
        def connect(self, factory):
            return fail(ConnectionRefusedError())

    d = RetryingEndpoint(Ep, clock, 60, gate, ("10.0.0.1", 80)).connect(None)
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    clock.advance(0.05)
    assert not gate.refusing(("10.0.0.1", 80))  # nobody waits: forgotten
    assert clock.getDelayedCalls() == []


def test_direct_endpoint_hands_over_the_connected_protocol_without_a_wrapper():
    from twisted.internet.testing import MemoryReactorClock

    from keda_proxy.upstream._dial import DirectEndpoint

    reactor = MemoryReactorClock()
    endpoint = DirectEndpoint(reactor, "fd00::1", 8080, 0.5)
    pool = ConnectionPool(reactor, lambda key, budget: endpoint)
    got = []
    pool.connect(KEY, 0).addCallback(got.append)
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("fd00::1", 8080, 0.5)
    assert got == []
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert got == [proto]
    assert isinstance(proto, UpstreamConnection) and proto.transport is transport


def test_direct_endpoint_failure_and_cancel():
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python.failure import Failure

    from keda_proxy.upstream._dial import DirectEndpoint

    reactor = MemoryReactorClock()
    endpoint = DirectEndpoint(reactor, "10.0.0.1", 80, 0.5)
    failures = []
    endpoint.connect(_factory()).addErrback(failures.append)
    factory, connector = reactor.tcpClients[0][2], reactor.connectors[0]
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert failures[0].check(ConnectionRefusedError)

    d = endpoint.connect(_factory())
    d.addErrback(failures.append)
    d.cancel()
    assert failures[1].check(CancelledError)
    assert reactor.connectors[1].stoppedConnecting
    # the connection completing after all is closed, not handed over
    proto = reactor.tcpClients[1][2].buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.disconnecting


def _factory():
    from twisted.internet.protocol import Factory
    return Factory.forProtocol(lambda: UpstreamConnection(Clock()))


def test_ip_version_is_remembered_and_stays_right():
    from keda_proxy.upstream._dial import _IP_VERSIONS, ip_version

    for _ in range(2):  # parsed, then remembered
        assert [ip_version(h) for h in ("10.0.0.7", "fd00::1", "web.default", "10.0.0")] \
            == [4, 6, None, None]
    assert _IP_VERSIONS["web.default"] is None and _IP_VERSIONS["fd00::1"] == 6
