"""Tests for keda_proxy.upstream._prewarm: pod connections opened while requests wait."""

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure

from keda_proxy.state._model import Endpoint, EndpointPort, EndpointSlice
from keda_proxy.steps import ProxySettings
from keda_proxy.upstream._prewarm import PodWarmer
from tests.builders import endpoint_slice, load, route, service
from tests.proxyfakes import OK_5, Harness, response_body

POD = (b"http", "10.0.0.7", 3000, "web.default")


def starting(ips=("10.0.0.7",), terminating=None):
    return EndpointSlice(
        namespace="default", name="web-abc", service_name="web",
        endpoints=tuple(Endpoint(addresses=(ip,), ready=False, terminating=terminating)
                        for ip in ips),
        ports=(EndpointPort(name="http", port=3000),))


def harness(per_pod=2, direct=True):
    h = Harness(settings=ProxySettings(direct_pod_routing=direct))
    warmer = PodWarmer(h.clock, h.store, h.gate, h.pool, per_pod=per_pod)
    return h, warmer


def hold(h, n, slices):
    """C{n} requests held; their client transports."""
    return [proto_and_transport[1] for proto_and_transport in held(h, n, slices)]


def held(h, n, slices):
    load(h.store, routes=[route()], services=[service()], slices=slices)
    return [h.get(b"/%d" % i) for i in range(n)]


def prove(h, warmer):
    """Let the first warm dial connect and stay open for an interval."""
    up = h.dials[0].succeed()
    h.clock.advance(warmer.interval)
    return up


def test_held_requests_open_connections_to_a_starting_pod_sending_nothing():
    h, warmer = harness(per_pod=2)
    hold(h, 3, [starting()])
    assert [d.key for d in h.dials] == [POD]  # one, until the pod proves itself
    first = prove(h, warmer)
    assert [d.key for d in h.dials] == [POD, POD]  # per_pod, fewer than held
    ups = [first, h.dials[1].succeed()]
    assert h.pool.idle_count(POD) == 2
    assert all(up.sent() == b"" for up in ups)
    h.clock.advance(1)  # later passes keep it at that
    assert len(h.dials) == 2


def test_no_more_connections_than_requests_held():
    h, warmer = harness(per_pod=10)
    hold(h, 2, [starting()])
    prove(h, warmer)
    h.clock.advance(1)
    assert len(h.dials) == 2


def test_released_requests_go_out_on_the_warm_connections():
    h, warmer = harness(per_pod=2)
    clients = hold(h, 3, [starting()])
    ups = [prove(h, warmer), h.dials[1].succeed()]
    load(h.store, routes=[route()], services=[service()],
         slices=[endpoint_slice(ips=("10.0.0.7",), ports=(("http", 3000),))])
    assert len(h.dials) == 3  # two warm connections reused, one new dial
    assert h.dials[2].key == POD
    ups.append(h.dials[2].succeed())
    for up in ups:
        assert up.request_line().startswith(b"GET /")
        up.respond(OK_5)
    assert [response_body(t) for t in clients] == [b"hello"] * 3


def test_a_refusing_pod_is_tried_once_per_interval_then_filled_up():
    h, warmer = harness(per_pod=3)
    hold(h, 5, [starting()])
    assert len(h.dials) == 1
    h.dials[0].fail(ConnectionRefusedError())
    h.clock.advance(warmer.interval)
    assert len(h.dials) == 2  # one probe per interval
    h.dials[1].fail(ConnectionRefusedError())
    h.clock.advance(warmer.interval)
    assert len(h.dials) == 3
    h.dials[2].succeed()  # listening now
    h.clock.advance(warmer.interval)  # and still open an interval later
    assert len(h.dials) == 5 and h.pool.idle_count(POD) == 1


def test_a_connection_the_pod_closed_is_opened_again():
    h, warmer = harness(per_pod=2)
    hold(h, 2, [starting()])
    first = prove(h, warmer)
    h.dials[1].succeed()
    first.close()
    assert h.pool.idle_count(POD) == 1
    h.clock.advance(warmer.interval)  # closed unused: careful again
    assert len(h.dials) == 2
    h.clock.advance(warmer.interval)  # the other stayed open: fill up
    assert len(h.dials) == 3


def test_connections_closed_unused_are_not_reopened_in_a_loop():
    """A pod whose connections die at once (a failed TLS handshake, a proxy
    in front that drops them) gets one dial per interval, never a refill."""
    h, warmer = harness(per_pod=8)
    hold(h, 8, [starting()])
    for n in range(10):
        for d in h.dials[n:]:
            d.succeed().close()
        h.clock.advance(warmer.interval)
    assert len(h.dials) == 11


def test_nothing_is_warmed_without_direct_pod_routing_or_for_terminating_pods():
    h, _ = harness(direct=False)
    hold(h, 2, [starting()])
    h.clock.advance(1)
    assert h.dials == []
    h, _ = harness()
    hold(h, 2, [starting(terminating=True)])
    h.clock.advance(1)
    assert h.dials == []


def test_warming_stops_once_nothing_is_held():
    h, warmer = harness(per_pod=2)
    [(proto, _)] = held(h, 1, [starting()])
    h.dials[0].fail(ConnectionRefusedError())
    proto.connectionLost(Failure(ConnectionDone()))  # the client gives up
    assert h.gate.waiting() == 0
    h.clock.advance(warmer.interval)
    probes = len(h.dials)
    h.clock.advance(10 * warmer.interval)
    assert len(h.dials) == probes
    assert warmer._timer is None and warmer._proven == set()


def test_a_pod_turning_ready_ends_warming():
    h, warmer = harness(per_pod=2)
    hold(h, 3, [starting()])
    h.dials[0].fail(ConnectionRefusedError())  # a pass would retry it
    load(h.store, routes=[route()], services=[service()],
         slices=[endpoint_slice(ips=("10.0.0.7",), ports=(("http", 3000),))])
    released = len(h.dials)
    assert released == 1 + 3  # the failed warm dial, then one per released request
    h.clock.advance(10 * warmer.interval)
    assert len(h.dials) == released
    assert warmer._timer is None


def test_stop_cancels_the_next_pass():
    h, warmer = harness(per_pod=2)
    hold(h, 2, [starting()])
    h.dials[0].fail(ConnectionRefusedError())
    warmer.stop()
    h.clock.advance(1)
    assert len(h.dials) == 1


def test_off_by_default_and_on_with_the_variable():
    from twisted.internet.testing import MemoryReactorClock

    from keda_proxy._app import Interceptor
    from keda_proxy.ops._config import load_config
    from keda_proxy.state._model import ALL_KINDS

    ports = {"KEDA_HTTP_PROXY_PORT": "1", "KEDA_HTTP_ADMIN_PORT": "2"}
    build = lambda env: Interceptor.build(  # noqa: E731
        MemoryReactorClock(), load_config({**ports, **env}), ALL_KINDS, plugins=())
    assert build({"KEDA_HTTP_DIRECT_POD_ROUTING": "true"}).warmer is None
    assert build({"KEDA_HTTP_DIRECT_POD_ROUTING": "false",
                  "KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS": "8"}).warmer is None  # no direct
    ic = build({"KEDA_HTTP_DIRECT_POD_ROUTING": "true",
                "KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS": "8"})
    assert ic.warmer.per_pod == 8 and ic.warmer.pool is ic.pool


def test_warming_with_no_total_bound_on_idle_connections():
    h, warmer = harness(per_pod=3)
    h.pool.max_idle = 0  # no limit, as in Go
    hold(h, 5, [starting()])
    prove(h, warmer)
    assert len(h.dials) == 3


def test_snapshot_changes_do_not_add_periodic_passes():
    h, warmer = harness(per_pod=2)
    hold(h, 2, [starting()])
    h.dials[0].fail(ConnectionRefusedError())
    for i in range(5):  # other Services' endpoints change meanwhile
        load(h.store, routes=[route()], services=[service()],
             slices=[starting(), endpoint_slice(service="other", name=f"other-{i}")])
    mine = [c for c in h.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is warmer]
    assert len(mine) == 1


def test_warming_stays_within_the_pools_total_bound():
    h, warmer = harness(per_pod=2)
    h.pool.max_idle = 3
    hold(h, 4, [starting(ips=("10.0.0.7", "10.0.0.8"))])
    for d in h.dials:
        d.succeed()
    h.clock.advance(warmer.interval)  # both pods proven: fill, up to 3 in all
    for d in h.dials[2:]:
        d.succeed()
    h.clock.advance(5 * warmer.interval)
    assert len(h.dials) == 3 and h.pool.idle_count() == 3
