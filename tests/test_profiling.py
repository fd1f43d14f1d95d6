"""
The profiling endpoint (keda_proxy.ops._profiling) on PROFILING_BIND_ADDRESS:
the whole service built as twistd builds it, on real loopback sockets,
with requests flowing through the proxy while profiles are taken; the
profiles are read back with the test's own pprof reader (tests/pprof.py)
and, where Go is installed, with ``go tool pprof``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory

from keda_proxy._app import Listener, ListenFailed, build_service
from keda_proxy.ops._config import ConfigError, load_config, parse_bind_address
from keda_proxy.ops._profiling import MAX_SECONDS, CPUSampler, PprofProfile
from tests import pprof
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import Client, RawClient, start_backend, wait_for


class Rig:
    """The service build_service makes, every listener on 127.0.0.1, the
    profiling one where PROFILING_BIND_ADDRESS says; a real backend."""

    def start(self, bind="127.0.0.1:0", **env):
        self.backend, self.backend_port = start_backend()
        bp = self.backend_port.getHost().port
        environ = {"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0",
                   "OTEL_PROM_EXPORTER_PORT": "0", "KEDA_HTTP_SHUTDOWN_DELAY": "0s",
                   "PROFILING_BIND_ADDRESS": bind, **env}
        self.config = load_config(environ)
        self.svc = build_service(reactor, self.config, lambda store: Service(),
                                 interface="127.0.0.1")
        self.ic = self.svc.interceptor
        load(self.ic.store, routes=[route(hosts=["web.example"])],
             services=[service(ports=(("http", bp),))],
             slices=[endpoint_slice(ports=(("http", bp),))])
        self.svc.privilegedStartService()
        self.svc.startService()
        self.client = Client()
        return self

    def listener(self, name) -> Listener:
        [found] = [s for s in self.svc if isinstance(s, Listener) and s.name_ == name]
        return found

    def url(self, name, path):
        return f"http://127.0.0.1:{self.listener(name).port.getHost().port}{path}"

    def get(self, name, path, **kw):
        return self.client.http.get(self.url(name, path), **kw)

    @inlineCallbacks
    def stop(self):
        yield self.client.close()
        yield self.svc.stopService()
        yield self.backend_port.stopListening()


@pytest.fixture
def rig():
    r = Rig().start()
    yield r
    pytest_twisted.blockon(r.stop())


class Load:
    """C{n} clients sending requests through the proxy, one after the other
    each, until stopped."""

    def __init__(self, rig, n=4):
        self.rig, self.sent, self.running = rig, 0, True
        self.done = DeferredList([self._loop() for _ in range(n)])

    @inlineCallbacks
    def _loop(self):
        url = self.rig.url("proxy", "/")
        while self.running:
            resp = yield self.rig.client.http.get(url, headers={"Host": "web.example"})
            assert resp.code == 200
            yield resp.content()
            self.sent += 1

    def stop(self):
        self.running = False
        return self.done


@inlineCallbacks
def livez_latencies(rig, until: Deferred, step=0.02):
    """Ask the admin port's /livez every C{step} s until C{until} has its
    result (C{called} is not enough: a Deferred waiting on another one is
    called already); the time each took."""
    done = []

    def finished(result):
        done.append(True)
        return result

    until.addBoth(finished)
    out = []
    while not done:
        started = time.monotonic()
        resp = yield rig.get("admin", "/livez")
        yield resp.content()
        assert resp.code == 200
        out.append(time.monotonic() - started)
        yield task.deferLater(reactor, step, lambda: None)
    return out


# -- CPU profiles --------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_cpu_profile_of_requests_in_flight_is_a_pprof_profile(rig):
    load_ = Load(rig)
    yield wait_for(lambda: load_.sent > 20, what="requests flowing")
    started = time.monotonic()
    sent_before = load_.sent
    d = rig.get("profiling", "/debug/pprof/profile?seconds=1")
    latencies = yield livez_latencies(rig, d)
    resp = yield d
    body = yield resp.content()
    took = time.monotonic() - started
    sent_during = load_.sent - sent_before
    yield load_.stop()

    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type") == ["application/octet-stream"]
    assert resp.headers.getRawHeaders("content-disposition") == [
        'attachment; filename="profile"']
    assert body[:2] == b"\x1f\x8b"  # gzipped, as Go serves it
    assert 0.9 < took < 5
    # the reactor kept serving while the profile was taken
    assert sent_during > 20
    assert len(latencies) >= 10
    assert max(latencies) < 0.1, latencies

    p = pprof.parse(body)
    pprof.check_valid(p)
    assert p.sample_types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert p.period_type == ("cpu", "nanoseconds")
    assert p.period == 10_000_000
    assert 0.9e9 < p.duration_nanos < 2e9
    assert abs(p.time_nanos / 1e9 - time.time()) < 60
    assert p.samples and all(s.values[0] >= 1 and s.values[1] > 0 for s in p.samples)
    names = p.function_names()
    # the proxy's own code, and the reactor's, on the reactor thread
    assert any(n.startswith("keda_proxy.") for n in names), sorted(names)
    assert any(n.startswith("twisted.internet.") for n in names)
    threads = {thread for thread, _, _ in p.stacks()}
    assert any(t.endswith("(reactor)") for t in threads), threads
    # stacks are innermost first: the reactor's run() below the proxy's code
    reactor_stacks = [names for thread, names, _ in p.stacks() if thread.endswith("(reactor)")]
    ordered = [stack for stack in reactor_stacks if "twisted.internet.base.ReactorBase.run" in stack
               and any(n.startswith("keda_proxy.") for n in stack)]
    assert ordered
    for stack in ordered:
        run = stack.index("twisted.internet.base.ReactorBase.run")
        assert all(i < run for i, n in enumerate(stack) if n.startswith("keda_proxy."))
    # each function knows its file and first line
    for name, system_name, filename, _start in p.functions.values():
        assert filename and name.endswith(system_name)
    assert p.mappings and p.mappings[0].get(7) == 1  # has_functions: nothing to symbolize


@pytest_twisted.inlineCallbacks
def test_collapsed_stacks_for_flame_graphs(rig):
    spin = task.LoopingCall(_spin, 0.004)
    spin.start(0.01)
    try:
        resp = yield rig.get("profiling", "/debug/pprof/profile?seconds=1&format=collapsed")
        body = (yield resp.content()).decode()
    finally:
        spin.stop()
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    lines = body.splitlines()
    assert lines
    for line in lines:
        stack, _, weight = line.rpartition(" ")
        assert int(weight) >= 1
        assert ";" in stack
    spinning = [line for line in lines if "tests.test_profiling._spin (" in line]
    assert spinning
    # outermost first, the thread's name before it
    assert spinning[0].split(";")[0].endswith("(reactor)")
    assert spinning[0].rpartition(" ")[0].split(";")[-1].startswith("tests.test_profiling._spin")


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_thread_is_charged_its_cpu_time_and_a_waiting_one_nothing():
    """Without the reactor: the sampler's own accounting."""
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            _spin(0.001)

    worker = threading.Thread(target=busy, name="busy-worker")
    sleeper = threading.Thread(target=stop.wait, name="sleeper")
    worker.start()
    sleeper.start()
    try:
        sampler = CPUSampler(0.5).run()
    finally:
        stop.set()
        worker.join()
        sleeper.join()
    by_thread = {}
    for (thread, _), (_samples, cpu) in sampler.counts.items():
        by_thread[thread] = by_thread.get(thread, 0) + cpu
    assert "sleeper" not in by_thread
    # about half a second of CPU, give or take the GIL's sharing
    assert 0.1e9 < by_thread["busy-worker"] < 0.6e9
    p = pprof.parse(sampler.profile().gzipped())
    pprof.check_valid(p)
    assert "tests.test_profiling._spin" in p.function_names()


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")
def test_go_tool_pprof_reads_the_profile(tmp_path):
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [_spin(0.001) for _ in iter(stop.is_set, True)],
                              name="spinner")
    worker.start()
    try:
        sampler = CPUSampler(0.3).run()
    finally:
        stop.set()
        worker.join()
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(sampler.profile().gzipped())
    out = subprocess.run(["go", "tool", "pprof", "-top", str(path)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "Type: cpu" in out.stdout
    assert "tests.test_profiling._spin" in out.stdout


@pytest_twisted.inlineCallbacks
def test_seconds_as_go_reads_it_and_bounded(rig):
    resp = yield rig.get("profiling", f"/debug/pprof/profile?seconds={MAX_SECONDS + 1}")
    body = yield resp.content()
    assert resp.code == 400
    assert resp.headers.getRawHeaders("x-go-pprof") == ["1"]
    assert b"exceeds" in body and str(MAX_SECONDS).encode() in body
    # not a number, or not above 0: Go's 30 s default (cut short here by
    # hanging up, which ends the sampling)
    resource = rig.listener("profiling").factory.resource.index.children[b"profile"]
    for query in ("seconds=x", "seconds=0", "seconds=-3", ""):
        client = yield RawClient.connect(rig.listener("profiling").port.getHost().port)
        client.transport.write(b"GET /debug/pprof/profile?%s HTTP/1.1\r\nHost: a\r\n\r\n"
                               % query.encode())
        yield wait_for(lambda: resource.busy, what="profiling begun")
        client.transport.loseConnection()
        yield client.lost
        yield wait_for(lambda: not resource.busy, timeout=2, what="sampling ended early")


@pytest_twisted.inlineCallbacks
def test_one_cpu_profile_at_a_time(rig):
    first = rig.get("profiling", "/debug/pprof/profile?seconds=1")
    resource = rig.listener("profiling").factory.resource.index.children[b"profile"]
    yield wait_for(lambda: resource.busy, what="first profile begun")
    resp = yield rig.get("profiling", "/debug/pprof/profile?seconds=1")
    body = yield resp.content()
    assert resp.code == 500
    assert body == b"Could not enable CPU profiling: cpu profiling already in use\n"
    resp = yield first
    yield resp.content()
    assert resp.code == 200
    resp = yield rig.get("profiling", "/debug/pprof/profile?seconds=1")
    yield resp.content()
    assert resp.code == 200


# -- threads, heap, index ----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_every_threads_stack_as_text_the_reactors_included(rig):
    # threads of earlier tests (gRPC's, thread pools') may end meanwhile:
    # the ones alive before and after must be there
    before = set(threading.enumerate())
    resp = yield rig.get("profiling", "/debug/pprof/goroutine?debug=2")
    text = (yield resp.content()).decode()
    after = set(threading.enumerate())
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    header, first = text.split("\n\nthread ")[:2]
    # the reactor first, named, its stack down to the resource answering
    assert "(reactor)" in first.splitlines()[0]
    assert "Stack (most recent call last):" in first
    assert "keda_proxy/ops/_profiling.py" in first and "in render_GET" in first
    assert "twisted/web/server.py" in first
    sections = len(text.split("\n\nthread ")) - 1
    assert header == f"{sections} threads in process {os.getpid()}"
    assert len(before & after) <= sections <= len(before | after)
    for t in before & after:
        assert repr(t.name) in text or repr(t.name + " (reactor)") in text


@pytest_twisted.inlineCallbacks
def test_threads_grouped_and_as_a_pprof_profile(rig):
    resp = yield rig.get("profiling", "/debug/pprof/goroutine?debug=1")
    text = (yield resp.content()).decode()
    assert "thread(s): " in text and "(reactor)" in text
    before = set(threading.enumerate())
    resp = yield rig.get("profiling", "/debug/pprof/goroutine")
    body = yield resp.content()
    after = set(threading.enumerate())
    assert resp.headers.getRawHeaders("content-type") == ["application/octet-stream"]
    p = pprof.parse(body)
    pprof.check_valid(p)
    assert p.sample_types == [("goroutine", "count")]
    assert len(before & after) <= len(p.samples) <= len(before | after)
    [reactor_stack] = [names for thread, names, _ in p.stacks() if thread.endswith("(reactor)")]
    assert reactor_stack[0].startswith("keda_proxy.ops._profiling.")


@pytest_twisted.inlineCallbacks
def test_heap_summary_by_type_when_tracemalloc_is_off(rig):
    import tracemalloc

    assert not tracemalloc.is_tracing()
    resp = yield rig.get("profiling", "/debug/pprof/heap?top=5")
    text = (yield resp.content()).decode()
    assert resp.code == 200
    lines = text.splitlines()
    assert lines[0].startswith("heap summary: gc-tracked objects by type")
    assert "PYTHONTRACEMALLOC" in lines[0]
    assert any(line.startswith("resident memory (RSS): ") for line in lines)
    table = lines[lines.index(f"{'count':>10}  type") + 1:]
    assert len(table) == 5
    counts = [int(line.split()[0]) for line in table]
    assert counts == sorted(counts, reverse=True) and counts[0] > 100


@pytest_twisted.inlineCallbacks
def test_heap_summary_by_allocation_site_when_tracemalloc_is_on(rig):
    import tracemalloc

    tracemalloc.start(10)
    try:
        hoard = [bytearray(4096) for _ in range(2000)]  # noqa: F841 - ~8 MiB here
        resp = yield rig.get("profiling", "/debug/pprof/heap")
        text = (yield resp.content()).decode()
    finally:
        tracemalloc.stop()
    lines = text.splitlines()
    assert lines[0].startswith("heap summary: tracemalloc")
    assert any(line.startswith("traced: ") for line in lines)
    # the largest site is the hoard, with its traceback
    first = text.index("#1: ")
    assert "test_profiling.py" in text[first:text.index("#2: ")]


@pytest_twisted.inlineCallbacks
def test_index_and_paths_as_go_serves_them(rig):
    resp = yield rig.get("profiling", "/debug/pprof/")
    page = (yield resp.content()).decode()
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    for link in ("profile?seconds=30", "heap", "goroutine?debug=1", "goroutine?debug=2",
                 "cmdline"):
        assert f"href='{link}'" in page
    resp = yield rig.get("profiling", "/debug/pprof", allow_redirects=False)
    assert resp.code == 301
    assert resp.headers.getRawHeaders("location") == ["/debug/pprof/"]
    resp = yield rig.get("profiling", "/debug/pprof/allocs")
    assert resp.code == 404 and (yield resp.content()) == b"Unknown profile\n"
    for path in ("/", "/metrics", "/debug", "/debug/other"):
        resp = yield rig.get("profiling", path)
        assert resp.code == 404, path
        assert (yield resp.content()) == b"404 page not found\n"
    resp = yield rig.get("profiling", "/debug/pprof/cmdline")
    assert resp.code == 200
    assert (yield resp.content()).split(b"\0")[0] == sys.executable.encode()


@pytest_twisted.inlineCallbacks
def test_bodies_are_refused_and_heads_bounded_as_on_the_admin_port(rig):
    port = rig.listener("profiling").port.getHost().port
    client = yield RawClient.connect(port)
    client.transport.write(b"POST /debug/pprof/profile HTTP/1.1\r\nHost: a\r\n"
                           b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
    yield client.lost
    assert client.received.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: GET, HEAD" in client.received
    client = yield RawClient.connect(port)
    client.transport.write(b"GET /debug/pprof/heap HTTP/1.1\r\nHost: a\r\n"
                           b"X-Long: " + b"a" * 20000 + b"\r\n\r\n")
    yield client.lost
    assert client.received.startswith(b"HTTP/1.1 431 ")


# -- where it listens ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_off_when_empty():
    r = Rig().start(bind="")
    try:
        assert not [s for s in r.svc if isinstance(s, Listener) and s.name_ == "profiling"]
    finally:
        yield r.stop()


def test_it_listens_only_where_the_variable_says(rig):
    host = rig.listener("profiling").port.getHost()
    assert host.host == "127.0.0.1" and host.port != 0


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:6060", ("127.0.0.1", 6060)),
    (":6060", ("", 6060)),
    ("[::1]:6060", ("::1", 6060)),
    ("localhost:6060", ("localhost", 6060)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_bind_addresses_as_go_takes_them(text, expected):
    assert parse_bind_address(text) == expected
    assert load_config({"KEDA_HTTP_PROXY_PORT": "1", "KEDA_HTTP_ADMIN_PORT": "2",
                        "PROFILING_BIND_ADDRESS": text}).profiling_bind_address == text


@pytest.mark.parametrize(("text", "why"), [
    ("6060", "host:port"),
    ("127.0.0.1", "host:port"),
    ("::1:6060", "brackets"),
    ("127.0.0.1:", "port number"),
    ("127.0.0.1:pprof", "port number"),
    (":65536", "port number"),
    ("[localhost]:6060", "IPv6"),
    ("bad host:6060", "host name"),
])
def test_a_bad_bind_address_is_one_line_naming_it(text, why):
    with pytest.raises(ConfigError) as e:
        load_config({"KEDA_HTTP_PROXY_PORT": "1", "KEDA_HTTP_ADMIN_PORT": "2",
                     "PROFILING_BIND_ADDRESS": text})
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f'invalid value for PROFILING_BIND_ADDRESS: "{text}"')
    assert why in message


def test_an_address_it_cannot_have_stops_startup_with_one_line():
    taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port = taken.getHost().port
    config = load_config({"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0",
                          "OTEL_PROM_EXPORTER_ENABLED": "false",
                          "PROFILING_BIND_ADDRESS": f"127.0.0.1:{port}"})
    svc = build_service(reactor, config, lambda store: Service(), interface="127.0.0.1")
    try:
        with pytest.raises(ListenFailed) as e:
            svc.privilegedStartService()
        assert str(e.value) == (f"profiling listener: cannot listen on 127.0.0.1 port "
                                f"{port}: Address already in use")
    finally:
        for s in svc:
            if isinstance(s, Listener) and s.port is not None:
                s.port.stopListening()
        taken.stopListening()


# -- the writer on its own -----------------------------------------------------


def test_the_writer_round_trips_through_the_reader():
    def f():
        import sys

        return sys._getframe()

    frame = f()
    p = PprofProfile([("samples", "count"), ("cpu", "nanoseconds")],
                     period_type=("cpu", "nanoseconds"), period=10_000_000,
                     time_nanos=2**62, duration_nanos=1_500_000_000, comments=["hello"])
    inner = p.location(frame.f_code, 300, "tests.test_profiling.f")
    outer = p.location(frame.f_back.f_code, 7, "tests.test_profiling.caller")
    assert p.location(frame.f_code, 300, "ignored") == inner
    p.add([inner, outer], [3, 2**40], labels=[("thread", "MainThread")])
    p.add([outer], [1, 0])
    raw = p.encode()
    assert gzip.decompress(p.gzipped()) == raw
    back = pprof.parse(raw)
    pprof.check_valid(back)
    assert back.time_nanos == 2**62 and back.duration_nanos == 1_500_000_000
    assert back.comments == ["hello"]
    assert [(s.location_ids, s.values, s.labels) for s in back.samples] == [
        ([inner, outer], [3, 2**40], {"thread": "MainThread"}), ([outer], [1, 0], {})]
    name, system_name, filename, start = back.functions[back.locations[inner][0][0]]
    assert (name, system_name, start) == ("tests.test_profiling.f", "f",
                                          frame.f_code.co_firstlineno)
    assert filename.endswith("test_profiling.py")
    assert back.locations[inner][0][1] == 300
