"""
The Kubernetes source against the fake API server, over real loopback HTTP.

The real ``kubernetes`` client (urllib3 and its sockets) talks to
L{tests.fakeapi.FakeApiServer}; the source feeds a real StateStore on the
global reactor that pytest-twisted runs.  Every wait is a bounded poll of a
condition.  Most tests end by comparing the store's objects with what the
server holds ("converged"): equal values, key for key, is what "no event
lost and none duplicated in effect" means.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IStateSource
from keda_proxy.state._endpoints import service_endpoints
from keda_proxy.state._kube_client import KubeConfigError, load_api_client
from keda_proxy.state._kube_source import KubernetesSource
from keda_proxy.state._kube_watch import WATCHED_KINDS, WatchTiming, backoff_delay
from keda_proxy.state._model import (
    ALL_KINDS,
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    RequestFacts,
)
from keda_proxy.state._resources import InvalidResource, parse_object
from keda_proxy.state._store import StateStore, merge_routes
from tests.fakeapi import (
    FakeApiServer,
    config_map,
    endpoint_slice,
    http_scaled_object,
    interceptor_route,
    service,
)
from tests.kubeconfig import write_kubeconfig
from tests.netsupport import free_port, wait_for

FAST = WatchTiming(
    server_timeout=30, connect_timeout=2.0, list_timeout=10.0,
    backoff_base=0.05, backoff_cap=0.25, min_watch=0.2,
    resync_interval=0, health_interval=0.1, stop_timeout=2.0,
)


def watch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("kube-watch-")]


class Harness:
    """A fake API server, a kubeconfig for it, and the source under test."""

    def __init__(self, fake: FakeApiServer, tmp_path):
        self.fake = fake
        self.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
        self.source = None
        self.store = None

    def start(self, namespace="", timing=FAST, parse=parse_object):
        self.namespace = namespace
        self.store = StateStore(clock=reactor, expected_kinds=frozenset(ALL_KINDS))
        self.source = KubernetesSource(
            self.store, reactor, reactor, load_api_client(self.kubeconfig),
            namespace, timing=timing, parse=parse)
        self.source.startService()
        return self

    @property
    def snap(self):
        return self.store.current

    def stats(self, kind):
        return self.source.watchers[kind].stats

    def expected(self):
        """What the store should hold, parsed from the server's objects."""
        out = {k: {} for k in ALL_KINDS}
        for kind in ALL_KINDS:
            for obj in self.fake.objects(kind):
                if self.namespace and obj["metadata"]["namespace"] != self.namespace:
                    continue
                try:
                    parsed = parse_object(obj)
                except InvalidResource:
                    continue
                if parsed is not None:
                    out[parsed.kind][parsed.key] = parsed.value
        return out

    def actual(self):
        return {k: dict(self.store.objects(k)) for k in ALL_KINDS}

    def converged(self):
        """The store's objects and its swapped snapshot both match the server."""
        expected = self.expected()
        if self.actual() != expected:
            return False
        snap = self.snap
        by_service = {}
        for s in expected[KIND_ENDPOINT_SLICE].values():
            by_service.setdefault(s.service_key, []).append(s)
        return (
            dict(snap.routes) == merge_routes(expected[KIND_INTERCEPTOR_ROUTE],
                                              expected[KIND_HTTP_SCALED_OBJECT])
            and dict(snap.services) == expected[KIND_SERVICE]
            and dict(snap.configmaps) == expected[KIND_CONFIG_MAP]
            and dict(snap.endpoints) == {k: service_endpoints(v) for k, v in by_service.items()}
        )

    def until(self, predicate, what, timeout=10.0):
        return wait_for(predicate, timeout=timeout, what=what)

    def until_converged(self, timeout=10.0):
        return wait_for(self.converged, timeout=timeout, what="store == server")

    def until_synced(self):
        return wait_for(lambda: self.snap.synced and self.converged(), what="first sync")

    def until_watching(self):
        """Every kind's watch is open at the server (not merely requested),
        so that a fault injected now hits an established stream."""
        return wait_for(lambda: self.fake.open_watches == len(ALL_KINDS),
                        what="five open watches")


@pytest.fixture
def fake():
    server = FakeApiServer(bookmark_interval=0.2).start()
    yield server
    server.stop()


@pytest.fixture
def h(fake, tmp_path):
    harness = Harness(fake, tmp_path)
    yield harness
    if harness.source is not None and harness.source.running:
        pytest_twisted.blockon(harness.source.stopService())
    assert watch_threads() == []


@pytest.fixture
def warnings():
    """Formatted warn-or-worse lines logged by the Kubernetes source."""
    lines = []

    def observe(event):
        if (event.get("log_namespace", "").startswith("keda_proxy.state._kube")
                and event.get("log_level") >= LogLevel.warn):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def seed(fake):
    fake.apply_many([
        interceptor_route("r1", "ns", service="web", hosts=["one.example"]),
        interceptor_route("r2", "ns", service="web", hosts=["two.example"]),
        http_scaled_object("legacy", "ns", service="web", hosts=["legacy.example"]),
        service("web", "ns"),
        service("other", "ns"),
        endpoint_slice("web-1", "ns", service="web", ips=["10.0.0.1", "10.0.0.2"]),
        endpoint_slice("web-2", "ns", service="web", ips=["10.0.0.3"]),
        config_map("bodies", "ns", data={"wait.html": "<p>hold on</p>"}),
        config_map("unrelated", "ns", labelled=False),
    ])


def query(path):
    return {k: v[-1] for k, v in parse_qs(urlsplit(path).query).items()}


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


# -- plain functions ------------------------------------------------------------


def test_backoff_grows_doubles_and_caps_with_jitter():
    lows = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.0) for n in range(1, 9)]
    highs = [backoff_delay(n, 0.5, 30.0, rand=lambda: 1.0) for n in range(1, 9)]
    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert lows == [d / 2 for d in highs]
    assert backoff_delay(1000, 0.5, 30.0, rand=lambda: 1.0) == 30.0


def test_load_api_client_explicit_path_then_env(tmp_path):
    explicit = write_kubeconfig(tmp_path / "a", "http://127.0.0.1:1111")
    from_env = write_kubeconfig(tmp_path / "b", "http://127.0.0.1:2222")
    env = {"KUBECONFIG": from_env}
    assert load_api_client(explicit, environ=env).configuration.host == "http://127.0.0.1:1111"
    assert load_api_client(None, environ=env).configuration.host == "http://127.0.0.1:2222"


def test_load_api_client_bad_path_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(KubeConfigError) as e:
        load_api_client(missing, environ={})
    message = str(e.value)
    assert "\n" not in message
    assert message == f"cannot load kubeconfig {missing!r}: no such file"
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [\n")
    with pytest.raises(KubeConfigError) as e:
        load_api_client(None, environ={"KUBECONFIG": str(garbage)})
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"cannot load kubeconfig {str(garbage)!r}")


def test_load_api_client_without_any_config(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeConfigError) as e:
        load_api_client(None, environ={})
    message = str(e.value)
    assert "\n" not in message
    assert "--kubeconfig" in message and "KUBECONFIG" in message and "in-cluster" in message


# -- sync -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_initial_sync_of_every_kind(h, fake):
    seed(fake)
    fake.update(dict(service("other", "ns"), metadata={
        "name": "other", "namespace": "ns",
        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]}))
    seen_metadata = []

    def parse(obj):
        seen_metadata.append(dict(obj.get("metadata") or {}))
        return parse_object(obj)

    h.start(parse=parse)
    assert not h.snap.synced
    await h.until_synced()
    snap = h.snap
    assert set(snap.routes) == {"ns/r1", "ns/r2", "ns/legacy"}
    assert snap.routes["ns/legacy"].kind == KIND_HTTP_SCALED_OBJECT
    assert set(snap.services) == {"ns/web", "ns/other"}
    eps = snap.endpoints_for("ns/web")
    assert eps.ready
    assert eps.candidates["http"] == (("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080))
    assert set(snap.configmaps) == {"ns/bodies"}  # the unlabelled one is never fetched
    assert snap.table.route(RequestFacts(host="one.example", path="/")).key == "ns/r1"
    # ConfigMaps are selected by the server, not filtered by us.
    cm_queries = [query(p) for _, p in fake.requests if "/configmaps" in p]
    assert cm_queries and all(
        q.get("labelSelector") == "http.keda.sh/response-body=true" for q in cm_queries)
    assert seen_metadata and all("managedFields" not in m for m in seen_metadata)


@pytest_twisted.ensureDeferred
async def test_not_synced_until_every_kind_has_listed(h, fake):
    seed(fake)
    fake.fail(500, only="/configmaps")
    h.start()
    await h.until(lambda: len(h.snap.routes) == 3 and h.snap.endpoints,
                  "the other kinds to arrive")
    await h.until(lambda: h.stats(KIND_CONFIG_MAP).failures >= 2, "ConfigMap list retries")
    assert not h.snap.synced
    fake.heal()
    await h.until_synced()


@pytest_twisted.ensureDeferred
async def test_creates_updates_and_deletes_propagate(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()

    fake.create(interceptor_route("r3", "ns", hosts=["three.example"]))
    await h.until(lambda: "ns/r3" in h.snap.routes, "new route")
    fake.update(interceptor_route("r3", "ns", hosts=["drei.example"]))
    await h.until(lambda: h.snap.routes["ns/r3"].rules[0].hosts == ("drei.example",),
                  "updated route")
    fake.delete("InterceptorRoute", "ns", "r3")
    await h.until(lambda: "ns/r3" not in h.snap.routes, "deleted route")

    # An InterceptorRoute shadows the HTTPScaledObject of the same name.
    fake.create(interceptor_route("legacy", "ns", hosts=["new.example"]))
    await h.until(lambda: h.snap.routes["ns/legacy"].kind == KIND_INTERCEPTOR_ROUTE,
                  "InterceptorRoute wins")

    # Endpoints flip not-ready and back; the last slice going means none.
    fake.update(endpoint_slice("web-1", "ns", service="web", ips=["10.0.0.1"], ready=False))
    fake.update(endpoint_slice("web-2", "ns", service="web", ips=["10.0.0.3"], ready=False))
    await h.until(lambda: not h.snap.endpoints_for("ns/web").ready, "not ready")
    fake.update(endpoint_slice("web-2", "ns", service="web", ips=["10.0.0.9"], ready=None))
    await h.until(lambda: h.snap.endpoints_for("ns/web").candidates.get("http")
                  == (("10.0.0.9", 8080),), "ready unset counts as ready")
    fake.delete("EndpointSlice", "ns", "web-1")
    fake.delete("EndpointSlice", "ns", "web-2")
    await h.until(lambda: "ns/web" not in h.snap.endpoints, "no endpoints")
    assert not h.snap.endpoints_for("ns/web").ready

    fake.update(service("other", "ns", ports=(("grpc", 9090),)))
    await h.until(lambda: h.snap.services["ns/other"].port_by_name("grpc"), "service port")

    # A ConfigMap that loses the label leaves the selector: the server says
    # DELETED on our watch.  Getting it back says ADDED.
    fake.update(config_map("bodies", "ns", labelled=False))
    await h.until(lambda: "ns/bodies" not in h.snap.configmaps, "unlabelled ConfigMap gone")
    fake.update(config_map("bodies", "ns", data={"x": "y"}))
    await h.until(lambda: h.snap.configmaps.get("ns/bodies")
                  and h.snap.configmaps["ns/bodies"].data == {"x": "y"}, "relabelled")
    await h.until_converged()
    assert all(h.stats(k).lists == 1 for k in ALL_KINDS)


@pytest_twisted.ensureDeferred
async def test_namespace_scoping(h, fake):
    fake.apply_many([
        interceptor_route("mine", "ns-a"), interceptor_route("theirs", "ns-b"),
        service("web", "ns-a"), service("web", "ns-b"),
        config_map("c", "ns-a"), config_map("c", "ns-b"),
    ])
    h.start(namespace="ns-a")
    await h.until_synced()
    assert set(h.snap.routes) == {"ns-a/mine"}
    assert set(h.snap.services) == {"ns-a/web"}
    assert set(h.snap.configmaps) == {"ns-a/c"}
    # Changes elsewhere never arrive: ns-b's is made first, ns-a's second,
    # so once ns-a's is here, ns-b's would have been too.
    fake.create(interceptor_route("late", "ns-b"))
    fake.create(interceptor_route("late", "ns-a"))
    await h.until(lambda: "ns-a/late" in h.snap.routes, "ns-a change")
    assert "ns-b/late" not in h.snap.routes
    assert fake.requests and all("/namespaces/ns-a/" in p for _, p in fake.requests)


# -- faults -------------------------------------------------------------------------


def change_everything(fake):
    """Creates, updates and deletes across kinds, including a short-lived object."""
    fake.create(interceptor_route("r3", "ns", hosts=["three.example"]))
    fake.update(interceptor_route("r1", "ns", hosts=["uno.example"]))
    fake.delete("InterceptorRoute", "ns", "r2")
    fake.create(interceptor_route("tmp", "ns"))
    fake.delete("InterceptorRoute", "ns", "tmp")
    fake.update(endpoint_slice("web-1", "ns", service="web", ips=["10.0.0.1"], ready=False))
    fake.delete("EndpointSlice", "ns", "web-2")
    fake.create(service("new", "ns"))
    fake.delete("ConfigMap", "ns", "bodies")


@pytest_twisted.ensureDeferred
async def test_dropped_watches_resume_and_replay_the_gap(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    before = h.snap
    watches = {k: h.stats(k).watches for k in ALL_KINDS}
    # Slow answers make sure the changes happen before any watch is back.
    fake.set_latency(0.3)
    fake.drop_watches()
    change_everything(fake)
    fake.set_latency(0)
    await h.until_converged()
    assert "ns/r2" not in h.snap.routes and "ns/tmp" not in h.snap.routes
    assert h.snap.routes["ns/r1"].rules[0].hosts == ("uno.example",)
    assert h.snap.generation > before.generation
    # Every kind watches again (some had nothing to catch up on), resumed
    # from its resourceVersion (replayed), not re-listed.
    await h.until(lambda: all(h.stats(k).watches > watches[k] for k in ALL_KINDS),
                  "every kind to watch again")
    for kind in ALL_KINDS:
        assert h.stats(kind).lists == 1
        assert h.stats(kind).expired == 0


@pytest_twisted.ensureDeferred
async def test_compaction_gets_410_and_a_relist_converges(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    fake.set_latency(0.3)
    fake.drop_watches()
    change_everything(fake)
    fake.compact()  # the gap's events are gone: only a re-list can see them
    fake.set_latency(0)
    await h.until_converged()
    assert "ns/r2" not in h.snap.routes  # a deletion nobody was told about
    assert "ns/web-2" not in h.store.objects(KIND_ENDPOINT_SLICE)
    # Every kind, changed or not, was told its resourceVersion expired and
    # listed again.
    await h.until(lambda: all(h.stats(k).expired >= 1 and h.stats(k).lists >= 2
                              for k in ALL_KINDS), "every kind to re-list")
    await h.until_converged()


@pytest_twisted.ensureDeferred
async def test_outage_keeps_the_last_snapshot_and_catches_up(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    kept = h.snap
    fake.stop()
    change_everything(fake)
    fake.compact()  # a restarted API server has no watch history to offer
    await h.until(lambda: all(h.stats(k).failures >= 2 for k in ALL_KINDS),
                  "every kind to notice the outage")
    await sleep(1.0)
    assert h.snap.routes == kept.routes
    assert h.snap.endpoints == kept.endpoints
    assert h.snap.synced
    fake.start()
    await h.until_converged()
    assert h.snap.synced


@pytest.mark.parametrize("reset", [False, True], ids=["http-500", "connection-reset"])
@pytest_twisted.ensureDeferred
async def test_failing_server_is_retried_with_backoff(h, fake, reset):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    fake.fail(500, reset=reset)
    fake.drop_watches()
    await h.until(lambda: all(h.stats(k).failures >= 3 for k in ALL_KINDS),
                  "repeated failures")
    fake.create(interceptor_route("r3", "ns"))
    counted = len(fake.requests)
    await sleep(1.0)
    # Capped at 0.25 s, each kind retries a handful of times a second, not
    # in a tight loop.
    assert len(fake.requests) - counted < 5 * 12
    assert "ns/r3" not in h.snap.routes
    fake.heal()
    await h.until(lambda: all(h.stats(k).lists >= 2 for k in ALL_KINDS), "re-lists")
    await h.until_converged()


@pytest_twisted.ensureDeferred
async def test_invalid_object_is_logged_once_and_skipped(h, fake, warnings):
    seed(fake)
    bad = interceptor_route("bad", "ns")
    bad["spec"]["target"]["portName"] = "http"  # port and portName: invalid
    fake.create(bad)
    h.start()
    await h.until_synced()
    await h.until_watching()
    assert set(h.snap.routes) == {"ns/r1", "ns/r2", "ns/legacy"}
    about_bad = [w for w in warnings if "ns/bad" in w]
    assert len(about_bad) == 1 and "InterceptorRoute" in about_bad[0]

    # A re-list sees it again but does not log it again.
    fake.compact(drop_watches=True)
    await h.until(lambda: h.stats(KIND_INTERCEPTOR_ROUTE).lists >= 2, "re-list")
    assert len([w for w in warnings if "ns/bad" in w]) == 1

    # A valid route edited into an invalid one stops routing.
    broken = interceptor_route("r1", "ns")
    broken["spec"]["target"] = {"service": "web"}
    fake.update(broken)
    await h.until(lambda: "ns/r1" not in h.snap.routes, "invalid edit removes the route")
    assert len([w for w in warnings if "ns/r1" in w]) == 1
    fake.update(interceptor_route("r1", "ns", hosts=["fixed.example"]))
    await h.until(lambda: "ns/r1" in h.snap.routes, "fixed route is back")
    await h.until_converged()
    assert len([w for w in warnings if "ns/bad" in w]) == 1
    assert {w for w in warnings if "ns/bad" not in w and "ns/r1" not in w} == set()


@pytest_twisted.ensureDeferred
async def test_oversize_config_map_is_skipped_with_one_warning(h, fake, warnings):
    from keda_proxy.state._resources import MAX_CONFIG_MAP_BYTES

    seed(fake)
    page = "x" * (MAX_CONFIG_MAP_BYTES // 2)
    fake.create(config_map("huge", "ns", data={"a.html": page, "b.html": page}))
    h.start()
    await h.until_synced()
    await h.until_watching()
    assert set(h.snap.configmaps) == {"ns/bodies"}
    [warning] = warnings
    assert "ConfigMap ns/huge: data: " in warning and "-byte limit" in warning

    # A ConfigMap that grows past the limit goes away, with one line.
    fake.update(config_map("bodies", "ns", data={"a.html": page, "b.html": page}))
    await h.until(lambda: "ns/bodies" not in h.snap.configmaps, "oversize edit removes it")
    assert len([w for w in warnings if "ns/bodies" in w]) == 1
    fake.update(config_map("bodies", "ns", data={"a.html": page}))
    await h.until(lambda: "ns/bodies" in h.snap.configmaps, "back under the limit")
    await h.until_converged()
    assert len(warnings) == 2


@pytest_twisted.ensureDeferred
async def test_bookmarks_keep_an_idle_kind_resumable(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    for i in range(3):  # moves the global resourceVersion, not ConfigMaps
        fake.create(interceptor_route(f"x{i}", "ns"))
    latest = fake.resource_version
    cm = h.stats(KIND_CONFIG_MAP)
    await h.until(lambda: int(cm.resource_version) >= latest, "a bookmark for ConfigMaps")
    watches = cm.watches
    fake.compact(upto=latest, drop_watches=True)
    await h.until(lambda: cm.watches > watches and fake.open_watches >= 5, "re-watch")
    await h.until_converged()
    assert cm.expired == 0 and cm.lists == 1


@pytest_twisted.ensureDeferred
async def test_server_timeout_ends_watches_that_are_simply_renewed(h, fake):
    seed(fake)
    h.start(timing=attrs.evolve(FAST, server_timeout=1))
    await h.until_synced()
    await h.until(lambda: h.stats(KIND_SERVICE).watches >= 3, "renewed watches", timeout=15)
    fake.create(service("late", "ns"))
    await h.until_converged()
    assert all(h.stats(k).lists == 1 and h.stats(k).failures == 0 for k in ALL_KINDS)
    assert any(query(p).get("timeoutSeconds") == "1" for _, p in fake.requests)


@pytest_twisted.ensureDeferred
async def test_periodic_resync_relists(h, fake):
    seed(fake)
    h.start(timing=attrs.evolve(FAST, resync_interval=0.3))
    await h.until_synced()
    generation = h.snap.generation
    await h.until(lambda: all(h.stats(k).lists >= 3 for k in ALL_KINDS), "resyncs")
    assert h.snap.synced and h.converged()
    assert all(h.stats(k).failures == 0 for k in ALL_KINDS)
    # Nothing changed, so nothing was handed over and nothing rebuilt.
    assert h.snap.generation == generation


@pytest_twisted.ensureDeferred
async def test_a_relist_hands_over_only_what_changed(h, fake):
    seed(fake)
    parsed = []

    def parse(obj):
        parsed.append(f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}")
        return parse_object(obj)

    h.start(parse=parse)
    await h.until_synced()
    await h.until_watching()
    unchanged = h.store.objects(KIND_SERVICE)["ns/web"]
    del parsed[:]
    fake.set_latency(0.2)
    fake.compact(drop_watches=True)
    fake.update(service("other", "ns", ports=(("admin", 9000),)))
    fake.delete("EndpointSlice", "ns", "web-2")
    fake.set_latency(0)
    await h.until(lambda: all(h.stats(k).lists == 2 for k in ALL_KINDS), "re-lists")
    await h.until_converged()
    assert h.snap.services["ns/other"].port_by_name("admin")
    # The untouched Service is still the very object of the first list:
    # it was not handed over (and re-indexed) again, nor even parsed again:
    # only the changed object was.
    assert h.store.objects(KIND_SERVICE)["ns/web"] is unchanged
    assert parsed == ["Service ns/other"]


class Crash(BaseException):
    """Gets past every ``except Exception``: a stand-in for a bug."""


@pytest_twisted.ensureDeferred
async def test_a_dead_thread_is_restarted(h, fake, warnings):
    seed(fake)
    crashed = []

    def parse(obj):
        if obj.get("kind") == "Service" and not crashed:
            crashed.append(threading.current_thread().name)
            raise Crash()
        return parse_object(obj)

    h.start(parse=parse)
    await h.until_synced()
    assert crashed == ["kube-watch-Service"]
    assert any("crashed" in w for w in warnings)
    assert any("restarting" in w for w in warnings)


# -- threads ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_ends_every_thread_while_watching(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    assert len(watch_threads()) == 5
    started = time.monotonic()
    await h.source.stopService()
    assert time.monotonic() - started < 1.0
    assert watch_threads() == []
    # Late events are not applied after stop.
    generation = h.snap.generation
    fake.create(interceptor_route("late", "ns"))
    await sleep(0.2)
    assert h.snap.generation == generation


@pytest_twisted.ensureDeferred
async def test_stop_wakes_threads_waiting_for_response_headers(h, fake):
    seed(fake)
    h.start()
    await h.until_synced()
    await h.until_watching()
    # Every new request now hangs before its headers: no response object
    # exists yet, so only cutting the socket can wake the threads.
    fake.set_latency(60)
    counted = len(fake.requests)
    fake.drop_watches()
    await h.until(lambda: len(fake.requests) - counted >= 5, "five blocked re-watches")
    started = time.monotonic()
    await h.source.stopService()
    assert time.monotonic() - started < 2.0
    assert watch_threads() == []


@pytest_twisted.ensureDeferred
async def test_large_relist_is_parsed_off_the_reactor_thread(h, fake):
    def slices(net):
        return [endpoint_slice(f"s{i}", "ns", service=f"svc{i}",
                               ips=[f"10.{net}.{i // 250}.{i % 250}"]) for i in range(2000)]

    fake.apply_many([service("web", "ns")] + slices(1))
    parse_threads = set()
    parsed_slices = []

    def parse(obj):
        parse_threads.add(threading.get_ident())
        if obj.get("kind") == "EndpointSlice":
            parsed_slices.append(1)
        return parse_object(obj)

    h.start(parse=parse)
    await h.until_synced()
    await h.until_watching()
    assert len(h.snap.endpoints) == 2000

    gaps = []
    last = [0.0]

    def tick():
        now = time.monotonic()
        if last[0]:
            gaps.append(now - last[0])
        last[0] = now

    # A slow server (1 s per answer) and a forced re-list in which all
    # 2,000 slices have changed (so all are parsed again).  Were the list
    # or its parsing on the reactor, it would stall for at least the second
    # the server takes.  (The test's own writes to the fake server happen
    # on this thread, so they come before the ticker starts.)
    fake.set_latency(1.0)
    fake.compact(drop_watches=True)
    fake.apply_many(slices(2))
    del parsed_slices[:]
    ticker = LoopingCall(tick)
    ticker.start(0.01)
    try:
        await h.until(lambda: h.stats(KIND_ENDPOINT_SLICE).lists >= 2, "the re-list")
        await h.until_converged()
    finally:
        ticker.stop()
    assert len(parsed_slices) == 2000
    assert h.snap.endpoints_for("ns/svc7").candidates["http"] == (("10.2.0.7", 8080),)
    assert threading.get_ident() not in parse_threads
    assert len(gaps) > 30
    # on the reactor, the list alone would stall it for the server's full
    # second; applying 2,000 changes takes a turn of its own, which a busy
    # machine can stretch towards half a second
    assert max(gaps) < 0.9, f"reactor stalled for {max(gaps):.3f}s"


class HeldReactor:
    """Takes callFromThread calls and never runs them: threads that have
    ended look, to the source, as if they were still running."""

    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *args, **kw):
        self.calls.append((f, args, kw))


def test_stop_gives_up_after_the_timeout_and_says_which_threads(tmp_path, warnings):
    kubeconfig = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{free_port()}")
    clock = Clock()
    source = KubernetesSource(StateStore(clock=clock), HeldReactor(), clock,
                              load_api_client(kubeconfig), timing=FAST)
    verifyObject(IStateSource, source)
    assert set(source.kinds) == set(ALL_KINDS)
    source.startService()
    d = source.stopService()
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    assert d.called and d.result is None  # shutdown goes on regardless
    assert any("still running 2.0s after stop" in w and "kube-watch-Service" in w
               for w in warnings)
    for watcher in source.watchers.values():
        watcher.thread.join(2)
        assert not watcher.is_alive()


def test_watched_kinds_cover_every_model_kind():
    assert sorted(k.kind for k in WATCHED_KINDS) == sorted(ALL_KINDS)
    labelled = {k.kind: k.label_selector for k in WATCHED_KINDS if k.label_selector}
    assert labelled == {KIND_CONFIG_MAP: "http.keda.sh/response-body=true"}
