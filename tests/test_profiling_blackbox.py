"""
Black-box: a real ``twistd keda-interceptor`` with PROFILING_BIND_ADDRESS
gives a CPU profile taken while requests flow through it, and its metrics
port serves the ``process_*`` series and 404 elsewhere; a bad address stops
start-up with one line.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests import pprof
from tests.netsupport import free_port
from tests.test_twistd import TWISTD, backend, http, manifest, run  # noqa: F401 - fixtures


def test_a_cpu_profile_of_the_process_under_load(tmp_path, backend, run):  # noqa: F811
    (tmp_path / "m.yaml").write_text(manifest(backend))
    pport, mport = free_port(), free_port()
    ic = run(tmp_path / "m.yaml", PROFILING_BIND_ADDRESS=f"127.0.0.1:{pport}",
             OTEL_PROM_EXPORTER_ENABLED="true", OTEL_PROM_EXPORTER_PORT=str(mport),
             OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=interceptor-0").ready()
    stop, sent, failed = threading.Event(), [0], []

    def load():
        while not stop.is_set():
            try:
                status = http(ic.url("/"), host="demo.test")[0]
            except OSError as e:
                failed.append(e)
                continue
            if status == 200:
                sent[0] += 1
            else:
                failed.append(status)

    clients = [threading.Thread(target=load, name=f"load-{i}") for i in range(4)]
    for c in clients:
        c.start()
    try:
        time.sleep(0.3)
        before = sent[0]
        started = time.monotonic()
        status, headers, body = http(
            f"http://127.0.0.1:{pport}/debug/pprof/profile?seconds=2", timeout=30)
        took = time.monotonic() - started
        during = sent[0] - before
        # the thread dump names the reactor
        _, _, dump = http(f"http://127.0.0.1:{pport}/debug/pprof/goroutine?debug=2")
        _, _, heap = http(f"http://127.0.0.1:{pport}/debug/pprof/heap")
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert status == 200, body
    assert failed == []
    assert 1.9 < took < 10
    assert during > 50  # requests kept flowing while the profile was taken
    p = pprof.parse(body)
    pprof.check_valid(p)
    assert p.sample_types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert p.samples
    names = p.function_names()
    assert any(n.startswith("keda_proxy.steps._") for n in names), sorted(names)
    assert any(n.startswith("keda_proxy.downstream._http1.") for n in names), sorted(names)
    reactor_cpu = sum(v[1] for thread, _, v in p.stacks() if thread == "MainThread (reactor)")
    assert reactor_cpu > 0.1e9  # the reactor did the work, and was sampled doing it
    assert "thread 'MainThread (reactor)'" in dump.decode()
    assert heap.decode().startswith("heap summary: gc-tracked objects by type")

    # and the metrics port: process_* and target_info, 404 elsewhere
    status, _, text = http(f"http://127.0.0.1:{mport}/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds",
                 "process_virtual_memory_bytes"):
        assert fams[name].samples[0].value > 0, name
    assert fams["process_cpu_seconds"].samples[0].value > 0.5
    [info] = fams["target_info"].samples
    assert info.labels["service_name"] == "keda-http-interceptor"
    assert info.labels["k8s_pod_name"] == "interceptor-0"
    counts = fams["interceptor_request_count"].samples
    assert sum(s.value for s in counts) >= sent[0]
    for path in ("/", "/debug/pprof/", "/metrics/"):
        status, _, body = http(f"http://127.0.0.1:{mport}{path}")
        assert (status, body) == (404, b"404 page not found\n"), path


def test_the_profiling_port_is_only_where_the_variable_says(tmp_path, backend, run):  # noqa: F811
    (tmp_path / "m.yaml").write_text(manifest(backend))
    pport = free_port()
    ic = run(tmp_path / "m.yaml", PROFILING_BIND_ADDRESS=f"127.0.0.1:{pport}").ready()
    assert http(f"http://127.0.0.1:{pport}/debug/pprof/")[0] == 200
    assert "profiling listening on" in ic.output()
    # nothing on another address of the machine for that port
    other = _other_local_address()
    if other is not None:
        try:
            urllib.request.urlopen(f"http://{other}:{pport}/debug/pprof/", timeout=2)
        except OSError as e:
            assert "refused" in str(e).lower() or isinstance(e, ConnectionRefusedError)
        else:
            raise AssertionError(f"the profiling port answered on {other}")


def _other_local_address():
    """A non-loopback address of this machine, if it has one."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_a_bad_profiling_address_stops_startup_with_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
    env.update(KEDA_HTTP_PROXY_PORT=str(free_port()), KEDA_HTTP_ADMIN_PORT=str(free_port()),
               OTEL_PROM_EXPORTER_ENABLED="false", PROFILING_BIND_ADDRESS="localhost")
    proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ['keda-interceptor: invalid value for PROFILING_BIND_ADDRESS: "localhost" '
                     '(expected host:port, such as "127.0.0.1:6060" or ":6060")'], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_profiling_address_in_use_stops_startup_with_one_line(tmp_path):
    import socket

    (tmp_path / "m.yaml").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
        env.update(KEDA_HTTP_PROXY_PORT=str(free_port()), KEDA_HTTP_ADMIN_PORT=str(free_port()),
                   OTEL_PROM_EXPORTER_ENABLED="false",
                   PROFILING_BIND_ADDRESS=f"127.0.0.1:{port}")
        proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert (f"profiling listener: cannot listen on 127.0.0.1 port {port}: "
            "Address already in use") in out
    assert "Traceback" not in out
