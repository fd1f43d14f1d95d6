"""
Tests for keda_proxy.state._manifests: the file/folder source, on a fake clock.
"""

from __future__ import annotations

import json
import os
import threading
import types

import pytest
import yaml
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IStateSink, IStateSource
from keda_proxy.state import _manifests as manifests_module
from keda_proxy.state._manifests import MAX_FILE_BYTES, ManifestError, ManifestSource
from keda_proxy.state._model import (
    ALL_KINDS,
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    ServiceRef,
)

ROUTE = """\
apiVersion: http.keda.sh/v1beta1
kind: InterceptorRoute
metadata:
  name: {name}
  namespace: default
spec:
  target:
    service: {service}
    port: 8080
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.0.0.1
  ports: [{{name: http, port: 8080}}]
"""


@implementer(IStateSink)
class RecordingSink:
    """Keeps what the source replaced, kind by kind, and every call."""

    def __init__(self):
        self.state = {}
        self.calls = []

    def replace(self, kind, objects):
        self.calls.append(kind)
        self.state[kind] = dict(objects)

    def put(self, kind, key, obj):
        raise AssertionError("the manifest source only replaces")

    def remove(self, kind, key):
        raise AssertionError("the manifest source only replaces")


@implementer(IReactorThreads, IReactorFromThreads)
class FakeThreads:
    """The reactor's thread pool and C{callFromThread}, run by hand.

    Work handed to "the thread" waits in C{work} until L{run_threads};
    results handed back to "the reactor" wait in C{delivered} until
    L{run_reactor}.  C{synchronous} runs both at once, so a reload
    completes within the tick that started it.
    """

    def __init__(self, synchronous=True):
        self.synchronous = synchronous
        self.work = []
        self.delivered = []

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.work.append((on_result, f, args, kwargs))
        if self.synchronous:
            self.run_threads()
            self.run_reactor()

    def callFromThread(self, f, *args, **kwargs):
        self.delivered.append((f, args, kwargs))

    def run_threads(self):
        while self.work:
            on_result, f, args, kwargs = self.work.pop(0)
            try:
                result = f(*args, **kwargs)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)

    def run_reactor(self):
        while self.delivered:
            f, args, kwargs = self.delivered.pop(0)
            f(*args, **kwargs)


class Harness:
    def __init__(self, path, interval=1.0, synchronous=True, **kwargs):
        self.clock = Clock()
        self.threads = FakeThreads(synchronous)
        self.sink = RecordingSink()
        self.events = []
        self.source = ManifestSource(
            path=path, sink=self.sink, clock=self.clock, interval=interval,
            reactor=self.threads,
            log=Logger(namespace="test", observer=self.events.append), **kwargs)
        self._mtime = 1_000_000_000

    def keys(self, kind=KIND_INTERCEPTOR_ROUTE):
        return sorted(self.sink.state.get(kind, {}))

    def lines(self, level=None):
        return [formatEvent(e) for e in self.events
                if level is None or e["log_level"] == level]

    def write(self, path, text):
        """Write and bump the mtime, as a fast test cannot rely on the clock."""
        path.write_text(text)
        self._mtime += 10
        os.utime(path, ns=(self._mtime * 10**9, self._mtime * 10**9))

    def tick(self, seconds=None):
        self.clock.advance(self.source.interval if seconds is None else seconds)


@pytest.fixture
def manifests(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    return folder


def test_initial_load_is_synchronous_and_replaces_every_kind(manifests):
    (manifests / "app.yaml").write_text(
        ROUTE.format(name="web", service="web") + "---\n" + SERVICE.format(name="web"))
    h = Harness(manifests)
    h.source.startService()
    assert sorted(h.sink.calls) == sorted(ALL_KINDS)
    assert h.keys() == ["default/web"]
    assert h.keys(KIND_SERVICE) == ["default/web"]
    assert h.sink.state[KIND_HTTP_SCALED_OBJECT] == {}
    assert h.sink.state[KIND_ENDPOINT_SLICE] == {}
    assert h.sink.state[KIND_CONFIG_MAP] == {}
    [info] = h.lines(LogLevel.info)
    assert "loaded 1 file(s)" in info
    assert "1 InterceptorRoute, 0 HTTPScaledObject, 1 Service" in info
    assert h.source.last_error is None
    h.source.stopService()


def test_interfaces(manifests):
    h = Harness(manifests)
    assert verifyObject(IStateSource, h.source)
    assert IService.providedBy(h.source)
    assert h.source.kinds == ALL_KINDS


def test_unchanged_files_are_not_reread(manifests):
    h = Harness(manifests)
    h.write(manifests / "a.yaml", ROUTE.format(name="web", service="web"))
    h.source.startService()
    calls = len(h.sink.calls)
    for _ in range(5):
        h.tick()
    assert len(h.sink.calls) == calls
    assert len(h.lines(LogLevel.info)) == 1
    h.source.stopService()


def test_edit_applies_on_next_poll(manifests):
    h = Harness(manifests, interval=2.0)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="web", service="web"))
    h.source.startService()
    h.write(f, ROUTE.format(name="web", service="other"))
    h.tick(1.9)
    assert h.sink.state[KIND_INTERCEPTOR_ROUTE]["default/web"].target.name == "web"
    h.tick(0.1)
    assert h.sink.state[KIND_INTERCEPTOR_ROUTE]["default/web"].target == ServiceRef(
        name="other", port=8080)
    h.source.stopService()


def test_yaml_syntax_error_keeps_last_good_state_until_fixed(manifests):
    h = Harness(manifests)
    good = manifests / "a.yaml"
    other = manifests / "b.yaml"
    h.write(good, ROUTE.format(name="web", service="web"))
    h.write(other, ROUTE.format(name="api", service="api"))
    h.source.startService()
    assert h.keys() == ["default/api", "default/web"]
    calls = len(h.sink.calls)

    # b.yaml breaks (and a.yaml loses "web" at the same time): nothing applies
    h.write(good, ROUTE.format(name="web2", service="web"))
    h.write(other, "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n")
    h.tick()
    assert len(h.sink.calls) == calls
    assert h.keys() == ["default/api", "default/web"]
    [error] = h.lines(LogLevel.error)
    assert error.startswith(f"{other}:5:1: YAML syntax error: ")
    assert "keeping the last good state" in error
    assert h.source.last_error.startswith(f"{other}:5:1")

    # nothing changed: no re-read, no second log line
    h.tick()
    h.tick()
    assert len(h.lines(LogLevel.error)) == 1

    h.write(other, ROUTE.format(name="api", service="api2"))
    h.tick()
    assert h.keys() == ["default/api", "default/web2"]
    assert h.sink.state[KIND_INTERCEPTOR_ROUTE]["default/api"].target.name == "api2"
    assert h.source.last_error is None
    h.source.stopService()


def test_syntax_error_line_and_column(manifests):
    h = Harness(manifests)
    h.write(manifests / "bad.yaml", "kind: Service\nmetadata:\n  name: a: b\n")
    h.source.startService()
    [error] = h.lines(LogLevel.error)
    # libyaml says "in this context", PyYAML's own parser "here"
    assert error.startswith(f"{manifests / 'bad.yaml'}:3:10: YAML syntax error: "
                            "mapping values are not allowed ")
    assert error.endswith("; nothing applied, keeping the last good state")
    assert h.sink.calls == []  # nothing ever applied: the store stays unsynced
    h.source.stopService()


def test_invalid_route_is_skipped_with_one_warning(manifests):
    h = Harness(manifests)
    bad = ROUTE.format(name="bad", service="b").replace("    port: 8080\n", "")
    h.write(manifests / "a.yaml", "\n---\n".join([
        ROUTE.format(name="one", service="s"),
        bad,
        ROUTE.format(name="two", service="s"),
    ]))
    h.source.startService()
    assert h.keys() == ["default/one", "default/two"]
    [warning] = h.lines(LogLevel.warn)
    assert warning == (
        f"{manifests / 'a.yaml'} document 2: skipping invalid InterceptorRoute "
        "default/bad: spec.target: exactly one of 'port' or 'portName' must be set")
    assert "1 invalid skipped" in h.lines(LogLevel.info)[0]
    h.source.stopService()


def test_deleted_document_and_file_disappear(manifests):
    h = Harness(manifests)
    a, b = manifests / "a.yaml", manifests / "b.yml"
    h.write(a, ROUTE.format(name="one", service="s") + "---\n"
            + ROUTE.format(name="two", service="s"))
    h.write(b, SERVICE.format(name="s"))
    h.source.startService()
    assert h.keys() == ["default/one", "default/two"]
    assert h.keys(KIND_SERVICE) == ["default/s"]

    h.write(a, ROUTE.format(name="one", service="s"))
    h.tick()
    assert h.keys() == ["default/one"]

    b.unlink()
    h.tick()
    assert h.keys(KIND_SERVICE) == []
    assert h.keys() == ["default/one"]
    h.source.stopService()


def test_folder_reads_yaml_yml_json_in_name_order_and_skips_others(manifests):
    h = Harness(manifests)
    h.write(manifests / "b.yml", ROUTE.format(name="dup", service="from-yml"))
    h.write(manifests / "a.yaml", ROUTE.format(name="dup", service="from-yaml"))
    h.write(manifests / "c.json", json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [{
            "apiVersion": "http.keda.sh/v1alpha1", "kind": "HTTPScaledObject",
            "metadata": {"name": "legacy"},
            "spec": {"hosts": ["l.example"],
                     "scaleTargetRef": {"service": "s", "portName": "http"}},
        }]}, indent=2))
    h.write(manifests / "notes.txt", "not: [yaml")
    h.write(manifests / ".hidden.yaml", "not: [yaml")
    (manifests / "sub.yaml").mkdir()
    h.source.startService()
    # b.yml is read after a.yaml, so its "dup" wins, with a warning
    assert h.sink.state[KIND_INTERCEPTOR_ROUTE]["default/dup"].target.name == "from-yml"
    assert h.keys(KIND_HTTP_SCALED_OBJECT) == ["default/legacy"]
    assert h.lines(LogLevel.error) == []
    [dup] = h.lines(LogLevel.warn)
    assert "InterceptorRoute default/dup is also defined in" in dup
    assert "loaded 3 file(s)" in h.lines(LogLevel.info)[0]
    h.source.stopService()


def test_json_file_path_and_json_syntax_error(tmp_path):
    f = tmp_path / "state.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "ServiceList", "items": [
        {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}}]}))
    h = Harness(f)
    h.source.startService()
    assert h.keys(KIND_SERVICE) == ["default/svc"]
    h.write(f, '{\n  "kind": "Service",\n  "metadata": {,}\n}')
    h.tick()
    assert h.keys(KIND_SERVICE) == ["default/svc"]
    [error] = h.lines(LogLevel.error)
    assert error.startswith(f"{f}:3:16: JSON syntax error: ")
    h.source.stopService()


def test_single_yaml_file_path(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text(ROUTE.format(name="web", service="s"))
    h = Harness(f)
    h.source.startService()
    assert h.keys() == ["default/web"]
    h.source.stopService()


def test_missing_path_fails_at_construction_with_one_line(tmp_path):
    with pytest.raises(ManifestError) as info:
        Harness(tmp_path / "nope")
    assert str(info.value) == f"manifest path {tmp_path / 'nope'} does not exist"


def test_path_that_disappears_keeps_state_and_logs_once(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text(ROUTE.format(name="web", service="s"))
    h = Harness(f)
    h.source.startService()
    calls = len(h.sink.calls)
    f.unlink()
    for _ in range(3):
        h.tick()
    assert len(h.sink.calls) == calls
    assert h.keys() == ["default/web"]
    [error] = h.lines(LogLevel.error)
    assert f"manifest path {f} is unavailable" in error
    assert "keeping the last good state" in error

    h.write(f, ROUTE.format(name="back", service="s"))
    h.tick()
    assert h.keys() == ["default/back"]
    h.source.stopService()


def test_unlabelled_config_map_and_foreign_kinds_are_ignored_quietly(manifests):
    h = Harness(manifests)
    h.write(manifests / "a.yaml", """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: plain}
data: {a: b}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: pages
  labels: {http.keda.sh/response-body: "true"}
data: {index.html: hi}
---
""")
    h.source.startService()
    assert h.keys(KIND_CONFIG_MAP) == ["default/pages"]
    assert h.lines(LogLevel.warn) == []
    h.source.stopService()


def test_our_kind_with_a_wrong_api_version_gets_a_warning(manifests):
    h = Harness(manifests)
    h.write(manifests / "a.yaml",
            ROUTE.format(name="web", service="s").replace("v1beta1", "v1alpha1"))
    h.source.startService()
    assert h.keys() == []
    [warning] = h.lines(LogLevel.warn)
    assert "document 1: ignoring 'InterceptorRoute' with apiVersion " \
           "'http.keda.sh/v1alpha1'" in warning
    h.source.stopService()


def test_stop_service_stops_polling(manifests):
    h = Harness(manifests)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="web", service="s"))
    h.source.startService()
    assert h.clock.getDelayedCalls()
    h.source.stopService()
    assert not h.source.running
    assert h.clock.getDelayedCalls() == []
    h.write(f, ROUTE.format(name="new", service="s"))
    h.tick()
    assert h.keys() == ["default/web"]


def test_unexpected_error_is_logged_and_polling_continues(manifests):
    h = Harness(manifests)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="web", service="s"))

    def broken(kind, objects):
        raise RuntimeError("sink exploded")

    h.sink.replace = broken
    h.source.startService()
    assert any("unexpected error" in line for line in h.lines(LogLevel.critical))
    del h.sink.replace
    h.write(f, ROUTE.format(name="new", service="s"))
    h.tick()
    assert h.keys() == ["default/new"]
    h.source.stopService()


def test_example_manifest_loads(tmp_path):
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "manifests")
    h = Harness(example)
    h.source.startService()
    assert h.lines(LogLevel.warn) == [] and h.lines(LogLevel.error) == []
    assert h.keys() == ["default/demo", "default/sleepy"]
    assert h.keys(KIND_HTTP_SCALED_OBJECT) == ["default/legacy"]
    assert h.keys(KIND_SERVICE) == ["default/demo", "default/sleepy"]
    assert h.keys(KIND_ENDPOINT_SLICE) == ["default/demo", "default/sleepy"]
    assert h.keys(KIND_CONFIG_MAP) == ["default/sleepy-placeholder"]
    h.source.stopService()


def test_feeds_the_real_state_store(manifests):
    from keda_proxy.state._store import StateStore

    clock = Clock()
    store = StateStore(clock=clock)
    (manifests / "a.yaml").write_text(ROUTE.format(name="web", service="s"))
    source = ManifestSource(path=manifests, sink=store, clock=clock,
                            log=Logger(observer=lambda e: None))
    source.startService()
    snapshot = store.flush()
    assert snapshot.synced
    assert list(snapshot.routes) == ["default/web"]
    source.stopService()


# -- reloading off the reactor thread ----------------------------------------


@pytest.fixture
def loads(monkeypatch):
    """The thread ident of every YAML parse, through the module's loader."""
    idents = []

    class CountingLoader(manifests_module.LOADER):
        def __init__(self, stream):
            idents.append(threading.get_ident())
            super().__init__(stream)

    monkeypatch.setattr(manifests_module, "LOADER", CountingLoader)
    return idents


def test_reload_parses_in_the_thread_pool_and_applies_on_the_reactor(manifests, loads):
    h = Harness(manifests, synchronous=False)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="web", service="s"))
    h.source.startService()
    # the first read runs at once, on the calling thread
    assert h.keys() == ["default/web"] and len(loads) == 1
    assert h.threads.work == []
    calls = len(h.sink.calls)

    h.write(f, ROUTE.format(name="new", service="s"))
    h.tick()
    assert len(h.threads.work) == 1
    assert len(loads) == 1  # not parsed on the reactor thread
    h.threads.run_threads()
    assert len(loads) == 2
    # parsed, but not applied until the reactor thread runs the result
    assert len(h.sink.calls) == calls and h.keys() == ["default/web"]
    h.threads.run_reactor()
    assert h.keys() == ["default/new"]
    h.source.stopService()


def test_reload_uses_a_real_thread_and_the_sink_only_sees_the_reactor_thread(manifests, loads):
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-manifests")

    @implementer(IReactorThreads, IReactorFromThreads)
    class Reactor:
        def __init__(self):
            self.delivered = []

        def getThreadPool(self):
            return pool

        def callFromThread(self, f, *args, **kwargs):
            self.delivered.append((f, args, kwargs))  # list.append is atomic

    class ThreadRecordingSink(RecordingSink):
        threads = set()

        def replace(self, kind, objects):
            self.threads.add(threading.get_ident())
            super().replace(kind, objects)

    reactor = Reactor()
    clock = Clock()
    sink = ThreadRecordingSink()
    f = manifests / "a.yaml"
    f.write_text(ROUTE.format(name="web", service="s"))
    source = ManifestSource(path=manifests, sink=sink, clock=clock, reactor=reactor,
                            log=Logger(observer=lambda e: None))
    source.startService()
    f.write_text(ROUTE.format(name="new", service="s"))
    os.utime(f, ns=(2 * 10**18, 2 * 10**18))
    pool.start()
    try:
        clock.advance(source.interval)
    finally:
        pool.stop()  # joins the worker: the parse is over
    main = threading.get_ident()
    assert len(loads) == 2 and loads[0] == main and loads[1] != main
    assert sorted(sink.state[KIND_INTERCEPTOR_ROUTE]) == ["default/web"]
    [(deliver, args, kwargs)] = reactor.delivered
    deliver(*args, **kwargs)
    assert sorted(sink.state[KIND_INTERCEPTOR_ROUTE]) == ["default/new"]
    assert ThreadRecordingSink.threads == {main}
    source.stopService()


def test_one_reload_at_a_time_and_a_change_during_it_reloads_after(manifests):
    h = Harness(manifests, synchronous=False)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="one", service="s"))
    h.source.startService()
    h.write(f, ROUTE.format(name="two", service="s"))
    h.tick()
    assert len(h.threads.work) == 1
    h.threads.run_threads()  # read "two"; not yet back on the reactor
    h.write(f, ROUTE.format(name="three", service="s"))
    h.tick()
    h.tick()
    assert h.threads.work == []  # no second reload while one is in flight
    h.threads.run_reactor()
    # "two" applied, and the change seen meanwhile started the next reload
    # at once, without waiting for a tick
    assert h.keys() == ["default/two"]
    assert len(h.threads.work) == 1
    h.threads.run_threads()
    h.threads.run_reactor()
    assert h.keys() == ["default/three"]
    h.tick()
    assert h.threads.work == []
    h.source.stopService()


def test_a_reload_that_ends_after_stop_is_dropped(manifests):
    h = Harness(manifests, synchronous=False)
    f = manifests / "a.yaml"
    h.write(f, ROUTE.format(name="one", service="s"))
    h.source.startService()
    h.write(f, ROUTE.format(name="two", service="s"))
    h.tick()
    h.source.stopService()
    h.threads.run_threads()
    h.threads.run_reactor()
    assert h.keys() == ["default/one"]
    h.source.startService()  # a restart reads the files again
    assert h.keys() == ["default/two"]
    h.source.stopService()


def test_only_changed_files_are_parsed_again(manifests, loads):
    h = Harness(manifests)
    for name in ("a", "b", "c"):
        h.write(manifests / f"{name}.yaml", ROUTE.format(name=name, service="s"))
    h.source.startService()
    assert len(loads) == 3
    h.write(manifests / "b.yaml", ROUTE.format(name="b2", service="s"))
    h.tick()
    assert len(loads) == 4
    assert h.keys() == ["default/a", "default/b2", "default/c"]
    assert "loaded 3 file(s) (1 re-read)" in h.lines(LogLevel.info)[-1]
    # a new file is parsed; a deleted one is forgotten
    h.write(manifests / "d.yaml", ROUTE.format(name="d", service="s"))
    (manifests / "a.yaml").unlink()
    h.tick()
    assert len(loads) == 5
    assert h.keys() == ["default/b2", "default/c", "default/d"]
    h.source.stopService()


def test_an_invalid_object_in_an_unchanged_file_is_not_reported_again(manifests):
    h = Harness(manifests)
    bad = ROUTE.format(name="bad", service="b").replace("    port: 8080\n", "")
    h.write(manifests / "a.yaml", bad)
    h.write(manifests / "b.yaml", ROUTE.format(name="web", service="s"))
    h.source.startService()
    assert len(h.lines(LogLevel.warn)) == 1
    h.write(manifests / "b.yaml", ROUTE.format(name="web2", service="s"))
    h.tick()
    assert h.keys() == ["default/web2"]
    assert len(h.lines(LogLevel.warn)) == 1
    assert "1 invalid skipped" in h.lines(LogLevel.info)[-1]
    h.source.stopService()


def test_only_kinds_that_changed_are_replaced(manifests):
    h = Harness(manifests)
    f = manifests / "a.yaml"
    text = ROUTE.format(name="web", service="s") + "---\n" + SERVICE.format(name="s")
    h.write(f, text)
    h.source.startService()
    assert sorted(h.sink.calls) == sorted(ALL_KINDS)
    # a comment: same objects, the sink is left alone
    h.write(f, text + "# edited\n")
    h.tick()
    assert len(h.sink.calls) == len(ALL_KINDS)
    assert "loaded 1 file(s) (1 re-read)" in h.lines(LogLevel.info)[-1]
    # a route edit replaces the routes only
    h.write(f, text.replace("service: s", "service: t"))
    h.tick()
    assert h.sink.calls[len(ALL_KINDS):] == [KIND_INTERCEPTOR_ROUTE]
    assert h.sink.state[KIND_INTERCEPTOR_ROUTE]["default/web"].target.name == "t"
    h.source.stopService()


def test_yaml_is_parsed_with_libyaml_when_pyyaml_has_it():
    if yaml.__with_libyaml__:
        assert manifests_module.LOADER is yaml.CSafeLoader
    else:
        assert manifests_module.LOADER is yaml.SafeLoader
    without = types.SimpleNamespace(SafeLoader=yaml.SafeLoader)
    assert manifests_module.safe_loader(without) is yaml.SafeLoader
    with_c = types.SimpleNamespace(SafeLoader=yaml.SafeLoader, CSafeLoader=object)
    assert manifests_module.safe_loader(with_c) is object


# -- size limits ----------------------------------------------------------------


def test_default_file_size_limit():
    assert MAX_FILE_BYTES == 8 * 1024 * 1024
    assert ManifestSource.__attrs_attrs__.max_file_bytes.default == MAX_FILE_BYTES


def test_oversize_file_is_skipped_with_one_line_and_the_rest_applies(manifests, loads):
    h = Harness(manifests, max_file_bytes=4096)
    big = manifests / "big.yaml"
    h.write(big, "\n---\n".join(ROUTE.format(name=f"r{i}", service="s") for i in range(40)))
    size = big.stat().st_size
    assert size > 4096
    h.write(manifests / "small.yaml", ROUTE.format(name="web", service="s"))
    h.source.startService()
    assert h.keys() == ["default/web"]
    assert len(loads) == 1  # the big file was not parsed
    [error] = h.lines(LogLevel.error)
    assert error == (f"skipping {big}: {size} bytes is over the 4096-byte limit "
                     "for a manifest file")
    assert "loaded 1 file(s)" in h.lines(LogLevel.info)[0]
    assert "1 too large skipped" in h.lines(LogLevel.info)[0]
    assert h.source.last_error is None

    # another file changes: the big one is not reported again
    h.write(manifests / "small.yaml", ROUTE.format(name="web2", service="s"))
    h.tick()
    assert h.keys() == ["default/web2"]
    assert len(h.lines(LogLevel.error)) == 1

    # cut down to size, it applies
    h.write(big, ROUTE.format(name="was-big", service="s"))
    h.tick()
    assert h.keys() == ["default/was-big", "default/web2"]
    assert "too large" not in h.lines(LogLevel.info)[-1]
    h.source.stopService()


def test_file_that_grows_while_it_is_read_is_cut_off_at_the_limit(manifests, monkeypatch):
    f = manifests / "a.yaml"
    f.write_text("# " + "x" * 5000 + "\n")
    # the size seen when the file was opened, before it grew
    monkeypatch.setattr(manifests_module.os, "fstat",
                        lambda fd: types.SimpleNamespace(st_size=10))
    events = []
    read = manifests_module._read_file((str(f), 0, 0, 10), 4096, events)
    assert read.too_large and read.objects == ()
    [(level, fmt, fields)] = events
    assert level == "error" and fields["size"] == 4097  # read no further


def test_oversize_config_map_is_skipped_with_one_warning(manifests):
    from keda_proxy.state._resources import MAX_CONFIG_MAP_BYTES

    h = Harness(manifests)
    page = "x" * (MAX_CONFIG_MAP_BYTES // 2)
    h.write(manifests / "a.yaml", f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: huge
  labels: {{http.keda.sh/response-body: "true"}}
data: {{a.html: {page}, b.html: {page}}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: pages
  labels: {{http.keda.sh/response-body: "true"}}
data: {{index.html: {page}}}
---
{ROUTE.format(name="web", service="s")}""")
    h.source.startService()
    assert h.keys(KIND_CONFIG_MAP) == ["default/pages"]
    assert h.keys() == ["default/web"]
    [warning] = h.lines(LogLevel.warn)
    assert warning == (
        f"{manifests / 'a.yaml'} document 1: skipping invalid ConfigMap default/huge: "
        f"data: {MAX_CONFIG_MAP_BYTES + 12} bytes is over the "
        f"{MAX_CONFIG_MAP_BYTES}-byte limit")
    h.source.stopService()
