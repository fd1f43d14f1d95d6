"""
Cold start: requests held while the Service has no ready pod, then released
by an EndpointSlice update, with and without direct-pod routing, against a
simulated slow kube-proxy.

Run: ``.venv/bin/python benchmarks/bench_cold_start.py [--delay 10] [--quick]``

Every scenario starts afresh, on loopback only, in a temp dir:

- the fake Kubernetes API server (``python -m tests.fakeapi``, a child
  process) holding an InterceptorRoute ``bench/app`` (host ``bench.local``,
  target Service ``app``, ``portName: http``), the Service ``bench/app``
  (``clusterIP: 127.0.0.3``, port ``http`` = P) and its EndpointSlice with
  one endpoint, ``127.0.0.2``, port ``http`` = P, ``ready: false``;
- the simulated pod: nginx (Debian; installed on first use when run as
  root), 200 with a 12-byte body, keep-alive, listening on ``127.0.0.2:P``
  from the start, as an application listens before its readiness probe
  passes;
- simulated kube-proxy (``benchmarks/coldstart_pod.py``, a child process,
  raw Twisted protocol): ``127.0.0.3:P``, the "Service address", refuses
  connections until ``--delay`` seconds after the pod is marked ready; then
  it answers there too (kube-proxy has caught up);
- keda-interceptor: ``twistd -n --pidfile= -r keda-epoll keda-interceptor``
  (the image's reactor; ``--reactor default`` runs twistd's own) with
  ``KUBECONFIG`` pointing at the fake API server,
  ``OTEL_PROM_EXPORTER_ENABLED=false``, ``KEDA_HTTP_SHUTDOWN_DELAY=0s``,
  ``KEDA_HTTP_DRAIN_TIMEOUT=1s`` (quick teardown only) and, for the
  direct-pod scenarios, ``KEDA_HTTP_DIRECT_POD_ROUTING=true``.

Then, once ``/readyz`` answers 200, an asyncio client in this process opens
N connections to the proxy and sends one ``GET /`` (``Host: bench.local``)
on each (the responses are then read by a bare epoll loop, which costs the
client a few microseconds per response).  When the admin ``/queue`` shows
``Concurrency == N`` (all held, none answered), the interceptor's VmRSS is read, and at T0 the
EndpointSlice is replaced with ``ready: true`` through the fake API
server's ``PUT`` (so a watch event flows) and the pod process is told to
open the Service address at T0 + D.  For each request the time from T0 to
its complete response is recorded with its status.  Afterwards ``/queue``
must come back to ``Concurrency == 0``.

Scenarios (``--quick``: D = 2 s and N = 1, 100 and a 1,000 stress):

- direct-pod routing, N = 1, 100, 1,000: the targets for 1,000:
  p50 <= 20 ms, p99 <= 60 ms;
- Service address (direct-pod routing off), N = 1, 100, 1,000: about D;
- direct-pod routing, 10,000 held: all 200 within 2 s of readiness, none
  lost, RSS <= 250 MB while holding, Concurrency back to 0.

References, run in the same harness in place of the interceptor (on core
0, as it is), for ratios measured in the same run (``--scenarios
direct:1000,go:1000,floor:1000``):

- ``go:N``: ``benchmarks/goholder/main.go``, built with Debian's golang-go
  (stdlib only): Go's ``httputil.ReverseProxy``, its transport set up as
  the Go interceptor's, holding requests until its own EndpointSlice watch
  says the pod is ready; ``GOMAXPROCS=1``.  Its transport bounds no
  connections per host, so each released request dials
  (``--go-max-conns N`` sets ``MaxConnsPerHost``);
- ``floor:N``: ``benchmarks/floorholder.py``, one raw ``epoll`` loop that
  does no proxy work: it forwards the request bytes as they came over 16
  pod connections, each freed one taking the next held request.  What it
  needs is what the harness and the kernel cost on this machine.

The report then gives the interceptor's p50, p99 and CPU per request over
each reference's, as medians over the runs of each.

The report counts the pod connections accepted after T0: the dials the
release made.  ``--env KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS=64`` measures
with warm connections (off by default): the interceptor then connects to
the starting pod while requests are held.

``--pod python`` makes the Python process the pod too (the same 12-byte
answer): it needs about four times nginx's CPU per request, on the two
cores the interceptor also runs on, where in a cluster the pod runs on
another node.  With nginx, the pod's counts come from its ``stub_status``.

The interceptor runs alone on core 0 and everything else on core 1, as in
``bench_proxy.py`` and ``bench_burst.py``: in a cluster it has its own CPU,
and the pod, the clients and the API server run elsewhere.  ``--no-pin``
lets them all share both cores; the pod's and the client's wake-ups then
preempt the interceptor tens to hundreds of times in a release (the
report counts them), which adds as much as the release's own cost varies.

File limits: this process raises its own soft RLIMIT_NOFILE to the hard
limit; the interceptor raises its own at startup, so no ``prlimit`` is
needed (a hard limit cannot be raised without CAP_SYS_RESOURCE).

Diagnostics (none changes keda_proxy):

- ``--diag`` puts a generated ``sitecustomize.py`` on the interceptor's
  PYTHONPATH that times every garbage collection, every reactor turn
  longer than 20 ms and the release's timeline (when the EndpointSlice
  change reached the reactor, and each release turn); the report gives them
  between T0 and the last response;
- ``--profile SCENARIO`` (e.g. ``direct:1000``) attaches ``py-spy record
  --nonblocking`` to the interceptor from just before T0 until the queue is
  empty again and prints its hot spots;
- ``--env NAME=VALUE`` adds to the interceptor's environment, e.g.
  ``KEDA_HTTP_CONNECT_TIMEOUT=30s``, or ``COLDSTART_GC_THRESHOLD=a,b,c``
  (with ``--diag``: ``gc.set_threshold(a, b, c)`` at startup);
- ``--interceptor SRC`` runs a git ref or another directory's keda_proxy;
- ``--wait-quiet S`` waits for the rest of the machine to go quiet first.

Every process started is stopped on exit, on an error, on Ctrl-C and on
SIGTERM, and by a watcher if this process is SIGKILLed (``benchlib.Teardown``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import queue
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GO_SOURCE = HERE / "goholder" / "main.go"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import benchlib as bl  # noqa: E402

from tests.fakeapi import endpoint_slice, service  # noqa: E402
from tests.kubeconfig import write_kubeconfig  # noqa: E402

NS = "bench"
APP = "app"
SLICE = "app-pod"
#: with --warm-up, a Service that is ready from the start, on the same pod
WARM_APP = "warm"
WARM_HOST = "warm.bench.local"
HOST = "bench.local"
ROUTE_KEY = f"{NS}/{APP}"
POD_IP = "127.0.0.2"
SERVICE_IP = "127.0.0.3"
REQUEST = (f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bench-cold-start\r\n"
           "Accept: */*\r\n\r\n").encode()

#: the cold-start targets
TARGET_P50_MS = 20.0
TARGET_P99_MS = 60.0
TARGET_STRESS_MS = 2000.0
TARGET_STRESS_RSS_MB = 250.0


# -- scenarios -------------------------------------------------------------------


#: the references a scenario can run instead of keda-interceptor, by kind:
#: (label, process name)
REFERENCES = {
    "go": ("Go reference, direct-pod", "goholder"),
    "floor": ("floor (raw epoll), direct-pod", "floorholder"),
}


class Scenario:
    def __init__(self, direct: bool, n: int, role: str = "", ref: str = ""):
        self.direct = direct
        self.n = n
        #: "latency" (the p50/p99 targets), "stress" (the 10,000 targets) or ""
        self.role = role
        #: a key of REFERENCES to run instead of keda-interceptor, or ""
        self.ref = ref

    @property
    def name(self) -> str:
        return f"{self.ref or ('direct' if self.direct else 'service')}:{self.n}"

    @property
    def label(self) -> str:
        if self.ref:
            return REFERENCES[self.ref][0]
        return "direct-pod" if self.direct else "Service address"

    @property
    def proxy(self) -> str:
        return REFERENCES[self.ref][1] if self.ref else "keda-interceptor"


def scenarios_for(args) -> List[Scenario]:
    if args.scenarios:
        out = []
        for item in args.scenarios.split(","):
            kind, _, n = item.strip().partition(":")
            if kind not in ("direct", "service", *REFERENCES) or not n.isdigit():
                sys.exit(f"--scenarios: bad item {item!r} (want direct:N, service:N, "
                         "go:N or floor:N)")
            n = int(n)
            role = ""
            if kind == "direct" and n >= 10_000:
                role = "stress"
            elif kind == "direct" and n == 1000:
                role = "latency"
            out.append(Scenario(kind != "service", n, role,
                                ref=kind if kind in REFERENCES else ""))
        return out
    if args.quick:
        return [Scenario(True, 1), Scenario(True, 100), Scenario(False, 1),
                Scenario(False, 100), Scenario(True, 1000, "stress")]
    return [Scenario(True, 1), Scenario(True, 100), Scenario(True, 1000, "latency"),
            Scenario(False, 1), Scenario(False, 100), Scenario(False, 1000),
            Scenario(True, 10_000, "stress")]


# -- child processes with a stdin/stdout control channel --------------------------


class Piped:
    """A child on a pipe: lines to its stdin, lines from its stdout (read by
    a thread into a queue); stderr to a log file.  Registered with the
    Teardown so that it is stopped with everything else."""

    def __init__(self, td: bl.Teardown, name: str, argv: List[str], cpu: Optional[int]):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.log = td.dir / f"{name}.log"
        logf = open(self.log, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=logf, cwd=ROOT, start_new_session=True,
                                  preexec_fn=bl._child_setup, text=True, bufsize=1)
        td.procs.procs.append((name, self.p, logf))
        with open(td.procs.pgid_file, "a") as f:
            f.write(f"{self.p.pid}\n")
        self.name = name
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"{name}-out").start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, left))
            except queue.Empty:
                line = ""
            if line is None:
                raise RuntimeError(f"{self.name} exited:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            if line.startswith(prefix):
                return line
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {prefix!r} within {timeout} s; "
                                   f"see {self.log}")

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()


def free_port_for(*addresses: str) -> int:
    """A port number free on every one of C{addresses}."""
    import socket

    for _ in range(100):
        first = socket.socket()
        first.bind((addresses[0], 0))
        port = first.getsockname()[1]
        ok = True
        others = []
        try:
            for addr in addresses[1:]:
                s = socket.socket()
                others.append(s)
                try:
                    s.bind((addr, port))
                except OSError:
                    ok = False
                    break
        finally:
            first.close()
            for s in others:
                s.close()
        if ok:
            return port
    raise RuntimeError(f"no common free port on {addresses}")


# -- the fake API server -----------------------------------------------------------


def the_slice(port: int, ready: bool) -> dict:
    return endpoint_slice(SLICE, NS, service=APP, ips=[POD_IP], port=port,
                          port_name="http", ready=ready)


def the_route(app: str = APP, host: str = HOST) -> dict:
    return {
        "apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute",
        "metadata": {"name": app, "namespace": NS},
        "spec": {
            "target": {"service": app, "portName": "http"},
            "rules": [{"hosts": [host]}],
            "scalingMetric": {"concurrency": {"targetValue": 100}},
        },
    }


class FakeApi:
    def __init__(self, td: bl.Teardown, cpu: Optional[int]):
        self.child = Piped(td, "fakeapi", [sys.executable, "-m", "tests.fakeapi",
                                           "--bookmark-interval", "30"], cpu)
        self.port = int(self.child.expect("PORT ").split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data)

    def seed(self, port: int) -> None:
        self.request("POST", "/fake/objects", [
            service(APP, NS, ports=(("http", port),), cluster_ip=SERVICE_IP),
            the_slice(port, ready=False),
            the_route(),
            # --warm-up: another Service, ready, on the same pod
            service(WARM_APP, NS, ports=(("http", port),), cluster_ip=SERVICE_IP),
            endpoint_slice(WARM_APP + "-pod", NS, service=WARM_APP, ips=[POD_IP], port=port,
                           port_name="http", ready=True),
            the_route(WARM_APP, WARM_HOST),
        ])


SLICE_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/{SLICE}"


# -- the client --------------------------------------------------------------------

_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class Rec:
    __slots__ = ("t", "status", "error", "cold", "done")

    def __init__(self):
        self.t = None
        self.status = None
        self.error = None
        self.cold = None
        self.done = False

    def answered(self, status: int, head: bytes) -> None:
        """A whole response is in (C{head} lower-cased)."""
        self.t = time.monotonic()
        self.status = status
        self.cold = b"\r\nx-keda-http-cold-start: true" in head
        self.done = True

    def closed(self, buf: bytearray, error: Optional[str] = None) -> None:
        """The connection ended before a response was complete: one whose
        body runs until the close is complete now; anything else failed."""
        if buf.find(b"\r\n\r\n") >= 0:
            self.answered(int(bytes(buf[9:12])), bytes(buf).lower())
            return
        self.t = time.monotonic()
        self.error = error or "closed before a response"
        self.done = True


def response_complete(buf: bytearray) -> Optional[tuple]:
    """(status, head) once C{buf} holds one whole response, else None."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = bytes(buf[:i]).lower()
    status = int(head[9:12])
    start = i + 4
    m = _CL.search(head)
    if m:
        return (status, head) if len(buf) - start >= int(m.group(1)) else None
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        pos = start
        while True:
            j = buf.find(b"\r\n", pos)
            if j < 0:
                return None
            size = int(bytes(buf[pos:j]).split(b";")[0], 16)
            if size == 0:
                return (status, head) if buf.find(b"\r\n\r\n", j) >= 0 else None
            pos = j + 2 + size + 2
            if pos > len(buf):
                return None
    if status in (204, 304) or 100 <= status < 200:
        return status, head
    return None  # body until close: completed in connection_lost


class ClientProto(asyncio.Protocol):
    def __init__(self, rec: Rec, on_done):
        self.rec = rec
        self.on_done = on_done
        self.buf = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(REQUEST)

    def data_received(self, data):
        if self.rec.done:
            return
        self.buf += data
        got = response_complete(self.buf)
        if got is not None:
            self.rec.answered(*got)
            self.on_done()

    def connection_lost(self, exc):
        if not self.rec.done:
            self.rec.closed(self.buf, f"closed: {exc}" if exc else None)
            self.on_done()


def collect(held, deadline: float) -> None:
    """Read every held response with a bare epoll loop, stamping each as it
    completes, until all are in or C{deadline} (monotonic) passes.

    During the release this loop is the whole client: asyncio's work per
    event cost the client process about 40 us per response, on the same two
    cores as the proxy under test; this costs a few.

    @param held: C{(Rec, ClientProto)} pairs whose transports are paused.
    """
    poller = select.epoll()
    waiting = {}
    for rec, proto in held:
        if not rec.done:
            fd = proto.transport.get_extra_info("socket").fileno()
            waiting[fd] = (rec, proto.buf)
            poller.register(fd, select.EPOLLIN)
    try:
        while waiting:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            for fd, _ in poller.poll(min(timeout, 0.1)):
                rec, buf = waiting[fd]
                if _read_held(fd, rec, buf):
                    poller.unregister(fd)
                    del waiting[fd]
    finally:
        poller.close()


def _read_held(fd: int, rec: Rec, buf: bytearray) -> bool:
    """One read for a held response; True once it is over, either way."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return False
    except OSError as e:
        rec.closed(buf, f"closed: {e}")
        return True
    if not data:
        rec.closed(buf)
        return True
    buf += data
    got = response_complete(buf)
    if got is None:
        return False
    rec.answered(*got)
    return True


def warm_up(ctx, n: int) -> int:
    """C{n} requests to the ready Service, over 16 keep-alive connections;
    returns how many were answered 200."""
    conns = [http.client.HTTPConnection("127.0.0.1", ctx.proxy_port, timeout=10)
             for _ in range(16)]
    ok = 0
    try:
        for i in range(n):
            conn = conns[i % len(conns)]
            conn.request("GET", "/", headers={"Host": WARM_HOST})
            resp = conn.getresponse()
            resp.read()
            ok += resp.status == 200
    finally:
        for conn in conns:
            conn.close()
    return ok


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def listen_overflows() -> int:
    """TcpExt ListenOverflows + ListenDrops (whole network namespace)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return d.get("ListenOverflows", 0) + d.get("ListenDrops", 0)
    return 0


def tcp_attempt_fails() -> int:
    """Tcp AttemptFails (whole network namespace): active opens that went
    from SYN-SENT back to CLOSED, i.e. refused dials on loopback."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Tcp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("AttemptFails")])


def queue_concurrency(admin_port: int) -> Optional[int]:
    try:
        status, body = bl.http_get(f"http://127.0.0.1:{admin_port}/queue", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    entry = json.loads(body).get(ROUTE_KEY)
    return None if entry is None else entry["Concurrency"]


def log_counts(path: Path) -> dict:
    text = path.read_text(errors="replace")
    return {
        "pod refused, trying another": text.count("refused; trying another"),
        "no ready pod answered, Service address": text.count("no ready pod answered"),
        "upstream failed": text.count("failed:") + text.count("failed\n"),
        "not ready in time": text.count("backend not ready in time"),
        "too many open files": text.count("Too many open files"),
        "tracebacks": text.count("Traceback"),
    }


# -- --diag: GC pauses and reactor stalls inside the interceptor ---------------------

#: Written as ``sitecustomize.py`` into a directory put first on the
#: interceptor's PYTHONPATH by ``--diag``: it times every garbage collection
#: (gc.callbacks) and every reactor turn longer than 20 ms (a 5 ms
#: LoopingCall started from a helper thread once the reactor runs), and
#: dumps both, with time.monotonic() stamps, when the process exits.  It
#: changes nothing in keda_proxy.
DIAG_SITECUSTOMIZE = r"""
import atexit, gc, json, os, sys, threading, time

_OUT = os.environ.get("COLDSTART_DIAG_OUT")
if os.environ.get("COLDSTART_GC_THRESHOLD"):  # an experiment: --env COLDSTART_GC_THRESHOLD=a,b,c
    gc.set_threshold(*map(int, os.environ["COLDSTART_GC_THRESHOLD"].split(",")))
if _OUT:
    _gc = []
    _start = [0.0]
    _stalls = []
    _dumped = []

    def _cb(phase, info):
        if phase == "start":
            _start[0] = time.monotonic()
        else:
            _gc.append((_start[0], time.monotonic() - _start[0], info["generation"]))

    gc.callbacks.append(_cb)

    # the release's timeline: each EndpointSlice change handed over by a watch
    # thread, and each ReadinessGate release turn (start, length, requests left)
    _marks = {"delivered": [], "turns": []}

    def _instrument():
        from keda_proxy.state._kube_source import KubernetesSource
        from keda_proxy.steps._readiness import ReadinessGate

        delivered, release = KubernetesSource._delivered, ReadinessGate._release

        def _delivered(self, watcher, op, args):
            if op in ("apply", "put") and watcher.kind.kind == "EndpointSlice":
                _marks["delivered"].append(time.monotonic())
            return delivered(self, watcher, op, args)

        def _release(self):
            start = time.monotonic()
            release(self)
            _marks["turns"].append((start, time.monotonic() - start, len(self._releasing)))

        KubernetesSource._delivered = _delivered
        ReadinessGate._release = _release

    def _monitor():
        _instrument()
        while "twisted.internet.reactor" not in sys.modules:
            time.sleep(0.05)
        from twisted.internet import reactor
        while not getattr(reactor, "running", False):
            time.sleep(0.05)

        def start():
            from twisted.internet.task import LoopingCall
            last = [time.monotonic()]

            def tick():
                now = time.monotonic()
                if now - last[0] > 0.02:
                    _stalls.append((last[0], now - last[0]))
                last[0] = now

            LoopingCall(tick).start(0.005)
            # twistd ends a SIGTERMed process by re-raising the signal, so
            # atexit would not run: dump when the reactor shuts down.
            reactor.addSystemEventTrigger("after", "shutdown", _dump)

        reactor.callFromThread(start)

    threading.Thread(target=_monitor, daemon=True, name="coldstart-diag").start()

    def _dump():
        if _dumped:
            return
        _dumped.append(True)
        with open(f"{_OUT}.{os.getpid()}", "w") as f:
            json.dump({"gc": _gc, "stalls": _stalls, "marks": _marks,
                       "gc_threshold": gc.get_threshold()}, f)

    atexit.register(_dump)
"""


def diag_summary(path: Path, t0: float, t_end: float) -> List[str]:
    """GC and stall figures between T0 and the last response."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [f"(no diagnostics: {e})"]
    gcs = [(s, d, g) for s, d, g in data["gc"] if t0 <= s <= t_end]
    out = []
    by_gen = {}
    for _s, d, g in gcs:
        c = by_gen.setdefault(g, [0, 0.0, 0.0])
        c[0] += 1
        c[1] += d
        c[2] = max(c[2], d)
    total = sum(c[1] for c in by_gen.values())
    out.append(f"garbage collection from T0 to the last response ({t_end - t0:.2f} s): "
               f"{len(gcs)} runs, {total * 1000:.0f} ms in all; " + "; ".join(
                   f"gen{g}: {c[0]} runs, {c[1] * 1000:.0f} ms, longest {c[2] * 1000:.1f} ms"
                   for g, c in sorted(by_gen.items())))
    stalls = [(s, d) for s, d in data["stalls"] if s + d >= t0 and s <= t_end]
    busy = sum(d for _s, d in stalls)
    def gc_in(start, dur):
        return sum(d for s, d, _g in gcs if start <= s <= start + dur)

    out.append(f"reactor turns longer than 20 ms in that time: {len(stalls)}, "
               f"{busy * 1000:.0f} ms in all; the longest: " + ", ".join(
                   f"T0{s - t0:+.3f} s for {d * 1000:.0f} ms "
                   f"({gc_in(s, d) * 1000:.0f} ms of it in GC)"
                   for s, d in sorted(stalls, key=lambda x: -x[1])[:5]))
    marks = data.get("marks", {})
    slices = [t for t in marks.get("delivered", []) if t >= t0]
    turns = [(s, d, left) for s, d, left in marks.get("turns", []) if t0 <= s <= t_end]
    if slices and turns:
        first, rest = turns[0], turns[1:]
        gaps = [b[0] - (a[0] + a[1]) for a, b in zip(turns, turns[1:], strict=False)]
        out.append(f"release timeline: the EndpointSlice change reached the reactor at "
                   f"T0 + {(slices[0] - t0) * 1000:.1f} ms, the first release turn began at "
                   f"T0 + {(first[0] - t0) * 1000:.1f} ms and took {first[1] * 1000:.2f} ms; "
                   f"{len(turns)} release turns, the last ending at "
                   f"T0 + {(turns[-1][0] + turns[-1][1] - t0) * 1000:.1f} ms"
                   + (f"; later turns {sum(d for _s, d, _l in rest) / len(rest) * 1000:.2f} ms "
                      f"each on average, with {sum(gaps) / len(gaps) * 1000:.2f} ms between "
                      "turns (answering the pod's responses, and the loop)" if rest else ""))
    return out


# -- one scenario ------------------------------------------------------------------


class Ctx:
    """What the client phase needs to know."""


async def client_phase(sc: Scenario, args, ctx) -> dict:
    loop = asyncio.get_running_loop()
    n = sc.n
    recs = [Rec() for _ in range(n)]
    count = {"done": 0}
    transports = []
    held = []  # (Rec, ClientProto)

    def on_done():
        count["done"] += 1

    sem = asyncio.Semaphore(args.open_concurrency)

    async def open_one(rec):
        async with sem:
            try:
                tr, proto = await loop.create_connection(lambda: ClientProto(rec, on_done),
                                                         "127.0.0.1", ctx.proxy_port)
                transports.append(tr)
                held.append((rec, proto))
            except OSError as e:
                rec.error = f"connect: {e}"
                rec.done = True
                on_done()

    out = {}
    if args.warm_up and sc.direct and not sc.ref:  # (the Service address only opens after T0)
        # an interceptor that has served traffic before, as one in a cluster
        # usually has: its forwarding code has run (CPython specialises code
        # as it runs it), though not for this Service (its own pool key)
        out["warm_up"] = await loop.run_in_executor(None, warm_up, ctx, args.warm_up)
    t_open = time.monotonic()
    await asyncio.gather(*(open_one(r) for r in recs))
    out["open_s"] = time.monotonic() - t_open

    # All held?  /queue must show every request in flight.
    deadline = time.monotonic() + 60
    conc = None
    while time.monotonic() < deadline:
        conc = await loop.run_in_executor(None, queue_concurrency, ctx.admin_port)
        if conc == n:
            break
        await asyncio.sleep(0.05)
    out["held_concurrency"] = conc
    out["answered_early"] = count["done"]
    if conc != n:
        bl.log(f"  /queue shows Concurrency {conc}, not {n}; going on anyway")
    await asyncio.sleep(0.5)  # let RSS settle
    out["rss_held"] = bl.rss_kb(ctx.pid)
    out["fds_held"] = bl.count_fds(ctx.pid)

    profiler = None
    if args.profile == sc.name:
        profiler = start_profiler(ctx)
    perf = start_perf(ctx) if args.perf == sc.name else None

    if ctx.nginx_status is not None:
        out["nginx_before"] = nginx_counts(ctx.nginx_status)
    ours = {ctx.pid, ctx.pod_pid, ctx.api_pid, os.getpid()}
    if ctx.nginx_status is not None:
        ours |= {ctx.pod.p.pid, ctx.nginx_master}
    all0 = bl.all_ticks()
    steal0 = bl.steal_ticks()
    ticks0 = {"interceptor": bl.proc_ticks(ctx.pid), "pod": bl.proc_ticks(ctx.pod_pid)}
    switches0 = context_switches(ctx.pid)
    ns0 = cpu_ns(ctx.pid)
    me0 = os.times()
    ovf0 = listen_overflows()
    refused0 = tcp_attempt_fails()
    pod, slice_ready = ctx.pod, the_slice(ctx.port, ready=True)
    delay = args.delay

    def release():
        conn = http.client.HTTPConnection("127.0.0.1", ctx.api_port, timeout=10)
        conn.connect()
        body = json.dumps(slice_ready)
        t0 = time.monotonic()
        pod.send(f"ARM {t0 + delay:.6f}")
        conn.request("PUT", SLICE_PATH, body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        stored = resp.read()
        t_put = time.monotonic()
        if resp.status != 200:
            raise RuntimeError(f"PUT {SLICE_PATH}: {resp.status}")
        # when the fake API server wrote the event on the interceptor's
        # watch: what comes before it is the harness's, not the proxy's
        rv = json.loads(stored)["metadata"]["resourceVersion"]
        conn.request("POST", "/fake/sent", body=json.dumps({"resourceVersion": rv}),
                     headers={"Content-Type": "application/json"})
        sent = json.loads(conn.getresponse().read())["sent"]
        conn.close()
        return t0, t_put, sent

    # from here on the held sockets are read by collect(), not by asyncio
    for tr in transports:
        tr.pause_reading()
    collector = threading.Thread(
        target=collect, args=(held, time.monotonic() + delay + args.grace), daemon=True)
    collector.start()
    t0, t_put, t_sent = await loop.run_in_executor(None, release)
    await loop.run_in_executor(None, collector.join)
    t_end = time.monotonic()
    ticks1 = {"interceptor": bl.proc_ticks(ctx.pid), "pod": bl.proc_ticks(ctx.pod_pid)}
    switches1 = context_switches(ctx.pid)
    out["cpu_ns"] = cpu_ns(ctx.pid) - ns0
    me1 = os.times()
    all1 = bl.all_ticks()
    out["steal_pct"] = 100.0 * (bl.steal_ticks() - steal0) / bl.CLK_TCK / max(1e-6, t_end - t0)
    out["other_cpu_pct"] = 100.0 * sum(
        max(0, t - all0.get(pid, 0)) for pid, t in all1.items()
        if pid not in ours and (profiler is None or pid != profiler[0].pid)
    ) / bl.CLK_TCK / max(1e-6, t_end - t0)
    out["overflows"] = listen_overflows() - ovf0
    out["refused"] = tcp_attempt_fails() - refused0
    out["cpu_s"] = {k: (ticks1[k] - ticks0[k]) / bl.CLK_TCK for k in ticks0}
    out["cpu_s"]["client"] = (me1.user + me1.system) - (me0.user + me0.system)
    out["switches"] = tuple(b - a for a, b in zip(switches0, switches1, strict=True))
    out["burst_s"] = t_end - t0
    out["t0"], out["t_end"] = t0, t_end
    out["put_ms"] = (t_put - t0) * 1000
    out["sent_ms"] = None if t_sent is None else (t_sent - t0) * 1000

    # Back to zero?
    deadline = time.monotonic() + 15
    after = None
    while time.monotonic() < deadline:
        after = await loop.run_in_executor(None, queue_concurrency, ctx.admin_port)
        if after == 0:
            break
        await asyncio.sleep(0.05)
    out["concurrency_after"] = after
    if profiler is not None:
        # read now: the scenario's temp dir is gone by the time of the report
        out["profile"] = summarize_profile(stop_profiler(profiler))
    if perf is not None:
        out["perf"] = summarize_perf(stop_profiler(perf))
    out["rss_after"] = bl.rss_kb(ctx.pid)
    out["fds_after_burst"] = bl.count_fds(ctx.pid)
    for tr in transports:
        tr.close()
    await asyncio.sleep(0.2)

    lat = [(r.t - t0) * 1000 for r in recs if r.done and r.status is not None]
    out["n"] = n
    out["lat"] = lat
    out["ok"] = sum(1 for r in recs if r.status == 200)
    out["statuses"] = Counter(r.status for r in recs if r.status is not None)
    out["errors"] = Counter(r.error for r in recs if r.error is not None)
    out["lost"] = sum(1 for r in recs if not r.done)
    out["cold"] = sum(1 for r in recs if r.cold)
    out["ok_lat"] = [(r.t - t0) * 1000 for r in recs if r.status == 200]
    return out


def start_profiler(ctx):
    out = ctx.td.dir / "py-spy.txt"
    # --nonblocking: the blocking mode stops the interceptor at every sample,
    # which stretched its wake-up turn past the 500 ms connect timeout.
    argv = ["py-spy", "record", "--pid", str(ctx.pid), "--rate", "500", "--nonblocking",
            "--format", "raw", "--output", str(out)]
    exe = Path(sys.executable).parent / "py-spy"
    if exe.exists():
        argv[0] = str(exe)
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(
        ctx.td.dir / "py-spy.log", "wb"), start_new_session=True, preexec_fn=bl._child_setup)
    ctx.td.procs.procs.append(("py-spy", p, open(os.devnull, "wb")))
    time.sleep(1.5)  # attach
    return p, out


def cpu_ns(pid: int) -> int:
    """The process's time on a CPU, all threads, in ns: its CPU-time clock
    (clock_gettime on MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), exact
    where /proc's ticks are 10 ms."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except OSError:
        return 0


def context_switches(pid: int):
    """The process's voluntary (it waited) and involuntary (it was
    preempted) context switches, all threads."""
    counts = [0, 0]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        counts[0] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        counts[1] += int(line.split()[1])
    except OSError:
        pass
    return tuple(counts)


def start_perf(ctx):
    """``perf record`` of the interceptor alone, kernel included (Debian's
    linux-perf), from just before T0: attaching is immediate."""
    out = ctx.td.dir / "perf.data"
    argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-g", "-p", str(ctx.pid),
            "-o", str(out)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(
        ctx.td.dir / "perf.log", "wb"), start_new_session=True, preexec_fn=bl._child_setup)
    ctx.td.procs.procs.append(("perf", p, open(os.devnull, "wb")))
    time.sleep(0.3)
    return p, out


#: kernel frames that name what a sample of the interceptor was doing
_SYSCALL = re.compile(r"^(?:__x64_sys_|__do_sys_|__sys_)(\w+)")


def summarize_perf(path: str, top: int = 20) -> List[str]:
    """Where the interceptor's CPU went: user code by library, kernel time
    by the system call it was in, and the hottest leaf functions."""
    try:
        text = subprocess.run(["perf", "script", "-i", path, "-F", "ip,sym,dso"],
                              capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"(no perf profile: {e})"]
    where, leaves = Counter(), Counter()
    total = 0
    for sample in text.split("\n\n"):
        frames = [ln.split(None, 1)[1] for ln in sample.strip().splitlines()
                  if len(ln.split(None, 1)) == 2]
        if not frames:
            continue
        total += 1
        leaf = frames[0]
        leaves[leaf.rsplit(" (", 1)[0] + (" [k]" if "kernel" in leaf else "")] += 1
        if "[kernel" not in leaf:
            where["user: " + leaf.rsplit("/", 1)[-1].rstrip(")")] += 1
            continue
        call = next((m.group(1) for f in frames if (m := _SYSCALL.match(f))), None)
        where[f"kernel: {call}" if call else "kernel: no system call (interrupt, fault)"] += 1
    if not total:
        return ["(no perf samples)"]
    return _shares(f"{total} samples of the interceptor (perf, cpu-clock, 4 kHz), from just "
                   "before T0 until /queue was back to 0", total,
                   [("by place", where, top), ("hottest functions (own time)", leaves, top)])


def _shares(header: str, total: int, sections) -> List[str]:
    """A profile's report: for each (title, Counter, how many), the most
    common entries as shares of C{total}."""
    out = [header]
    for title, counter, most in sections:
        out += ["", f"{title}:"]
        out += [f"  {100 * c / total:5.1f}%  {k}" for k, c in counter.most_common(most)]
    return out


def stop_profiler(profiler) -> str:
    p, out = profiler
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
    return str(out)


def summarize_profile(path: str, top: int = 25) -> List[str]:
    own, incl = Counter(), Counter()
    total = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        return [f"(no profile: {e})"]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        if "Thread._bootstrap" in stack:
            continue  # the Kubernetes watch threads, blocked in a socket read
        frames = [_short(f) for f in stack.split(";")]
        total += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return ["(no samples)"]
    return _shares(f"{total} samples of the reactor thread (500/s, --nonblocking; py-spy's idle "
                   "filter on; the watch threads left out)", total,
                   [("own time", own, top), ("inclusive time", incl, top + 12)])


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    m = re.match(r"(.*) \((.*?)([^/]+\.py):(\d+)\)$", frame)
    if m:
        pkg = "twisted/" if "/twisted/" in m.group(2) else (
            "keda_proxy/" if "/keda_proxy/" in m.group(2) else "")
        return f"{m.group(1)} ({pkg}{m.group(3)}:{m.group(4)})"
    return frame


def other_cpu_pct(seconds: float = 1.0) -> float:
    """CPU used by every process but this one over C{seconds}, in % of one
    core (nothing of ours runs between scenarios)."""
    me = os.getpid()
    a = bl.all_ticks()
    time.sleep(seconds)
    b = bl.all_ticks()
    return 100.0 * sum(max(0, t - a.get(p, 0)) for p, t in b.items() if p != me) \
        / bl.CLK_TCK / seconds


def wait_quiet(limit_s: float, threshold: float = 10.0) -> float:
    """Wait up to C{limit_s} for the rest of the machine to use less than
    C{threshold} % of a core; returns the last reading."""
    deadline = time.monotonic() + limit_s
    pct = other_cpu_pct()
    while pct >= threshold and time.monotonic() < deadline:
        pct = other_cpu_pct()
    return pct


def nginx_pod_conf(dir: Path, port: int, status_port: int) -> Path:
    """nginx as the pod: the Python pod's 12-byte answer on the pod address,
    and its request counters on a status port."""
    body = f"""\
    server {{
        listen {POD_IP}:{port} backlog=65535;
        location / {{
            default_type text/plain;
            return 200 "hello, pod!\\n";
        }}
    }}
    server {{
        listen {POD_IP}:{status_port};
        location / {{ stub_status; }}
    }}"""
    return bl.write_nginx(dir, body)


def nginx_counts(status_port: int) -> tuple:
    """(accepted connections, requests) from nginx's stub_status; each
    call counts itself once in both."""
    conn = http.client.HTTPConnection(POD_IP, status_port, timeout=5)
    conn.request("GET", "/")
    text = conn.getresponse().read().decode()
    conn.close()
    accepts, _handled, requests = (int(x) for x in text.splitlines()[2].split())
    return accepts, requests


def run_scenario(sc: Scenario, args) -> dict:
    cpu_ic = 0 if args.pin else None
    cpu_rest = 1 if args.pin else None
    with bl.Teardown(f"keda-coldstart-{sc.name.replace(':', '-')}-", keep=args.keep) as td:
        ctx = Ctx()
        ctx.td = td
        ctx.port = free_port_for(POD_IP, SERVICE_IP)
        api = FakeApi(td, cpu_rest)
        api.seed(ctx.port)
        ctx.api_port = api.port
        pod_argv = [sys.executable, str(HERE / "coldstart_pod.py"), "--port", str(ctx.port),
                    "--pod", POD_IP, "--service", SERVICE_IP]
        ctx.nginx_status = None
        if args.pod == "nginx":
            pod_argv.append("--no-pod")
        pod = Piped(td, "pod", pod_argv, cpu_rest)
        pod.expect("READY")
        ctx.pod = pod
        ctx.pod_pid = pod.p.pid
        if args.pod == "nginx":
            # nginx is the pod; the Python process only plays kube-proxy
            ctx.nginx_status = bl.free_ports(1)[0]
            conf = nginx_pod_conf(td.dir / "nginx-pod", ctx.port, ctx.nginx_status)
            nginx = bl.ensure_tools(["nginx"])["nginx"]
            started = bl.start_nginx(td.procs, "nginx-pod", nginx, conf,
                                     cpu_rest if cpu_rest is not None else "0,1")
            ctx.pod_pid = started["workers"][0]
            ctx.nginx_master = started["master"]
        ctx.api_pid = api.child.p.pid
        proxy_port, admin_port = bl.free_ports(2)
        if sc.ref:
            p, logfile = start_reference(td, args, sc, api, proxy_port, admin_port, cpu_ic)
        else:
            p, logfile = start_interceptor(td, args, sc, api, proxy_port, admin_port, cpu_ic)
        ctx.pid, ctx.proxy_port, ctx.admin_port = p.pid, proxy_port, admin_port
        bl.wait_ready(p, sc.proxy, logfile, admin_port, 60,
                      also=lambda: queue_concurrency(admin_port) == 0)
        ctx.limits = _nofile_of(ctx.pid)
        ctx.affinity = {sc.proxy: bl.affinity(ctx.pid),
                        "pod": bl.affinity(ctx.pod_pid),
                        "fake API": bl.affinity(api.child.p.pid),
                        "client": bl.affinity(os.getpid())}
        rss_idle = bl.rss_kb(ctx.pid)
        bl.log(f"{sc.name}: {sc.proxy} pid {ctx.pid} ready (RSS "
               f"{rss_idle['VmRSS'] / 1024:.0f} MB, nofile {ctx.limits}); opening {sc.n} "
               "connections")
        res = asyncio.run(client_phase(sc, args, ctx))
        res["rss_idle"] = rss_idle
        pod.send("STATS")
        res["pod_stats"] = json.loads(pod.expect("{"))
        if ctx.nginx_status is not None:
            accepts, requests = nginx_counts(ctx.nginx_status)
            base_accepts, base_requests = res["nginx_before"]
            # each status query is one connection and one request
            res["pod_stats"]["pod"] = {"connections": accepts - base_accepts - 1,
                                       "requests": requests - base_requests - 1}
        res["alive"] = p.poll() is None
        if args.diag and not sc.ref:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            res["diag"] = diag_summary(td.dir / f"diag.json.{p.pid}", res["t0"],
                                       res["t_end"])
        res["log"] = log_counts(logfile)
        res["limits"] = ctx.limits
        res["affinity"] = ctx.affinity
        res["dir"] = str(td.dir)
        return res


def start_interceptor(td: bl.Teardown, args, sc: Scenario, api: FakeApi, proxy_port: int,
                      admin_port: int, cpu: Optional[int]):
    """keda-interceptor under twistd, watching the fake API server: its
    Popen and log file."""
    kubeconfig = write_kubeconfig(td.dir / "kubeconfig", api.url)
    env = dict(os.environ)
    env.update(
        KEDA_HTTP_PROXY_PORT=str(proxy_port),
        KEDA_HTTP_ADMIN_PORT=str(admin_port),
        OTEL_PROM_EXPORTER_ENABLED="false",
        KUBECONFIG=str(kubeconfig),
        KEDA_HTTP_SHUTDOWN_DELAY="0s",
        KEDA_HTTP_DRAIN_TIMEOUT="1s",
    )
    if ctx_src(args) is not None:
        # ahead of the editable install's path: keda_proxy comes from there
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ctx_src(args))]
            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # said either way: direct-pod routing is on by default
    env["KEDA_HTTP_DIRECT_POD_ROUTING"] = "true" if sc.direct else "false"
    if args.diag:
        diag_dir = td.dir / "diag"
        diag_dir.mkdir()
        (diag_dir / "sitecustomize.py").write_text(DIAG_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(diag_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["COLDSTART_DIAG_OUT"] = str(td.dir / "diag.json")
    for item in args.env:
        k, _, v = item.partition("=")
        env[k] = v
    argv = [bl.twistd_path(), "-n", "--pidfile=",
            *(["-r", args.reactor] if args.reactor != "default" else []),
            "keda-interceptor"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    logfile = td.dir / "keda-interceptor.log"
    where = str(ctx_src(args) or ROOT)
    bl.check_import_source(env, where)
    return td.procs.start("keda-interceptor", argv, logfile, env=env, cwd=where), logfile


def start_reference(td: bl.Teardown, args, sc: Scenario, api: FakeApi, proxy_port: int,
                    admin_port: int, cpu: Optional[int]):
    """A reference (L{REFERENCES}) in the interceptor's place, watching the
    fake API server: its Popen and log file.  The Go one (built once per
    run) gets one core's worth of Go runtime, GOMAXPROCS=1."""
    flags = ["--listen", f"127.0.0.1:{proxy_port}", "--admin", f"127.0.0.1:{admin_port}",
             "--api", api.url, "--namespace", NS, "--service", APP, "--port-name", "http"]
    if sc.ref == "go":
        argv = [args.go_binary, *flags, "--max-conns-per-host", str(args.go_max_conns)]
        env = dict(os.environ, GOMAXPROCS="1")
    else:
        argv, env = [sys.executable, str(HERE / "floorholder.py"), *flags], None
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    logfile = td.dir / f"{sc.proxy}.log"
    return td.procs.start(sc.proxy, argv, logfile, env=env), logfile


def ctx_src(args) -> Optional[Path]:
    """The keda_proxy source chosen with --interceptor (None: this checkout)."""
    return args.src


def _nofile_of(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


# -- report ------------------------------------------------------------------------


def verdict(sc: Scenario, r: dict, delay: float) -> tuple:
    """(text, passed or None when there is no target)"""
    n = sc.n
    lat = r["lat"]
    base_ok = r["ok"] == n and r["lost"] == 0 and r["concurrency_after"] == 0
    if sc.role == "latency":
        ok = base_ok and lat and percentile(lat, 50) <= TARGET_P50_MS \
            and percentile(lat, 99) <= TARGET_P99_MS
        return f"p50 <= {TARGET_P50_MS:.0f} ms, p99 <= {TARGET_P99_MS:.0f} ms", bool(ok)
    if sc.role == "stress":
        ok = base_ok and lat and max(lat) <= TARGET_STRESS_MS \
            and r["rss_held"]["VmRSS"] / 1024 <= TARGET_STRESS_RSS_MB
        return (f"all 200 <= {TARGET_STRESS_MS / 1000:.0f} s, 0 lost, RSS <= "
                f"{TARGET_STRESS_RSS_MB:.0f} MB, back to 0"), bool(ok)
    if not sc.direct:
        ok = base_ok and lat and delay <= min(lat) / 1000 and max(lat) / 1000 <= delay + 2
        return f"about D ({delay:g} s)", bool(ok)
    return "all 200, back to 0", bool(base_ok)


def reference_ratios(results) -> list:
    """[(N, reference kind, interceptor runs, reference runs, [(ours, theirs)
    for p50 ms, p99 ms and CPU us per request])], each figure the median
    over the direct-pod runs with all N answered 200, for each N and
    reference that both ran."""
    by = {}
    for r in results.values():
        sc = r["scenario"]
        if "failed" in r or not sc.direct or r["ok"] != sc.n:
            continue
        lat = r["lat"]
        by.setdefault((sc.n, sc.ref), []).append(
            (percentile(lat, 50), percentile(lat, 99), r["cpu_ns"] / 1000 / sc.n))
    out = []
    for (n, ref), theirs in sorted(by.items()):
        ours = by.get((n, ""))
        if not ref or not ours:
            continue
        cells = [(statistics.median(row[i] for row in ours),
                  statistics.median(row[i] for row in theirs)) for i in range(3)]
        out.append((n, ref, len(ours), len(theirs), cells))
    return out


def fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def print_report(args, results, argv) -> bool:
    print()
    print("## Cold start: held requests released by an EndpointSlice update")
    print()
    print("- command: `" + " ".join([".venv/bin/python", "benchmarks/bench_cold_start.py",
                                     *argv]) + "`")
    print(f"- machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}, Linux {platform.release()}")
    print(f"- keda-interceptor: {args.where}"
          + (f"; twistd -r {args.reactor}" if args.reactor != "default"
             else "; twistd's default reactor")
          + (f"; extra environment: {' '.join(args.env)}" if args.env else ""))
    print(f"- D (Service address opens D s after the readiness update): {args.delay:g} s")
    first = next(iter(results.values()), None)
    if first is not None and "affinity" in first:
        where = ", ".join(f"{k} on CPUs {v}" for k, v in first["affinity"].items())
        print(f"- where things ran: {where}"
              + (" (pinned)" if args.pin else " (nothing pinned: --no-pin)"))
        print(f"- keda-interceptor open-file limit (soft/hard, raised by itself to the hard "
              f"limit): {first['limits']}; this client: "
              f"{'/'.join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))}")
    print()
    head = ("| routing | N | p50 ms | p99 ms | max ms | first ms | 200s | errors | lost "
            "| served by pod / Service | RSS held MB | peak RSS MB | Concurrency held → after "
            "| interceptor CPU s | target |")
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|")
    all_ok = True
    for r in results.values():
        sc = r["scenario"]
        if "failed" in r:
            print(f"| {sc.label} | {sc.n:,} | - | - | - | - | - | - | - | - | - | - | - | - "
                  f"| run failed: {r['failed']} |")
            all_ok = False
            continue
        lat = r["lat"]
        errs = sum(r["errors"].values()) + sum(c for s, c in r["statuses"].items() if s != 200)
        target, ok = verdict(sc, r, args.delay)
        all_ok = all_ok and ok
        ps = r["pod_stats"]
        print(f"| {sc.label} | {sc.n:,} "
              f"| {fmt_ms(percentile(lat, 50) if lat else None)} "
              f"| {fmt_ms(percentile(lat, 99) if lat else None)} "
              f"| {fmt_ms(max(lat) if lat else None)} "
              f"| {fmt_ms(min(lat) if lat else None)} "
              f"| {r['ok']:,} | {errs:,} | {r['lost']:,} "
              f"| {ps['pod']['requests']:,} / {ps['service']['requests']:,} "
              f"| {r['rss_held']['VmRSS'] / 1024:.0f} "
              f"| {r['rss_after']['VmHWM'] / 1024:.0f} "
              f"| {r['held_concurrency']} → {r['concurrency_after']} "
              f"| {r['cpu_s']['interceptor']:.2f} "
              f"| {target}: **{'PASS' if ok else 'FAIL'}** |")
    ratios = reference_ratios(results)
    if ratios:
        print()
        print("Against the references in this run (`go:N`: `benchmarks/goholder`, "
              "`floor:N`: `benchmarks/floorholder.py`), medians over the runs of each, "
              "keda-interceptor's / the reference's:")
        print()
        print("| N | reference | runs | p50 ms | p99 ms | CPU per request µs |")
        print("|---:|---|---|---|---|---|")
        for n, ref, runs, ref_runs, cells in ratios:
            print(f"| {n:,} | {REFERENCES[ref][1]} | {runs} / {ref_runs} | " + " | ".join(
                f"{ours:.1f} / {theirs:.1f} = ×{ours / theirs:.2f}"
                for ours, theirs in cells) + " |")
    print()
    print("Columns: latencies run from T0, the instant just before the EndpointSlice "
          "`PUT` (ready: true) is sent to the fake API server, to the client's receipt of "
          "the complete response; \"first\" is the fastest request. \"served by\" counts "
          "the requests the simulated pod answered on 127.0.0.2 and on the Service "
          "address 127.0.0.3. RSS held is VmRSS with all N held; peak RSS is VmHWM after "
          "the run. Interceptor CPU is user + system time from T0 until the last response.")
    print()
    print("Details per scenario:")
    for name, r in results.items():
        sc = r["scenario"]
        if "failed" in r:
            print(f"- {name}: FAILED: {r['failed']}")
            continue
        errs = dict(r["errors"])
        statuses = {k: v for k, v in r["statuses"].items() if k != 200}
        log_bits = ", ".join(f"{k}: {v}" for k, v in r["log"].items() if v)
        ok_lat = r["ok_lat"]
        within2 = sum(1 for x in ok_lat if x <= TARGET_STRESS_MS)
        print(f"- {name}: "
              + (f"warm-up: {r['warm_up']:,} requests answered 200 by the ready Service; "
                 if r.get("warm_up") is not None else "")
              + f"opened {sc.n:,} connections in {r['open_s']:.1f} s; "
              f"{r['answered_early']} answered before T0; "
              f"RSS idle {r['rss_idle']['VmRSS'] / 1024:.0f} MB → held "
              f"{r['rss_held']['VmRSS'] / 1024:.0f} MB "
              f"({(r['rss_held']['VmRSS'] - r['rss_idle']['VmRSS']) / max(1, sc.n):.1f} kB "
              f"per held request incl. its connection); interceptor fds held "
              f"{r['fds_held']:,}, right after {r['fds_after_burst']:,}; "
              f"PUT round trip {r['put_ms']:.1f} ms; "
              + (f"watch event written by the fake API server at T0 + {r['sent_ms']:.1f} ms "
                 f"(p50 from then: {percentile(ok_lat, 50) - r['sent_ms']:.1f} ms); "
                 if r.get("sent_ms") is not None and ok_lat else "")
              + f"connections accepted by the pod process on {POD_IP} / {SERVICE_IP}: "
              f"{r['pod_stats']['pod']['connections']:,} / "
              f"{r['pod_stats']['service']['connections']:,}; "
              f"cold-start header true on {r['cold']:,}; "
              f"200s within 2 s: {within2:,}; "
              f"CPU s from T0 to the last response ({r['burst_s']:.2f} s): interceptor "
              f"{r['cpu_s']['interceptor']:.2f}, pod {r['cpu_s']['pod']:.2f}, client "
              f"{r['cpu_s']['client']:.2f}, other processes "
              f"{r['other_cpu_pct']:.0f}% of a core (before the scenario: "
              f"{r['other_before']:.0f}%), steal "
              + (f"{r['steal_pct']:.0f}%; " if r["burst_s"] >= 1 else "n/a (< 1 s); ")
              + "interceptor CPU per request (its CPU clock): "
              f"{r['cpu_ns'] / 1000 / max(1, r['n']):.1f} us; "
              f"interceptor context switches in that time: {r['switches'][0]:,} waiting, "
              f"{r['switches'][1]:,} preempted; "
              f"listen-queue overflows {r['overflows']}; refused dials (TCP AttemptFails) "
              f"{r['refused']:,}"
              + (f"; Service address up at T0 + "
                 f"{r['pod_stats']['service_up'] - r['pod_stats']['armed'] + args.delay:.3f} s"
                 if r['pod_stats']['service_up'] else "")
              + (f"; non-200: {statuses}" if statuses else "")
              + (f"; errors: {errs}" if errs else "")
              + (f"; interceptor log: {log_bits}" if log_bits else "")
              + ("" if r["alive"] else "; keda-interceptor DIED"))
    for name, r in results.items():
        for line in r.get("diag", ()):
            print(f"- {name} (--diag): {line}")
    for name, r in results.items():
        for key, title in (("perf", f"perf, {name}"),
                           ("profile", f"py-spy, {name}, from just before T0 until /queue "
                                       "was back to 0")):
            if r.get(key):
                print(f"\n{title}:\n\n```")
                print("\n".join(r[key]))
                print("```")
    print()
    print("PASS" if all_ok else "FAIL: a target was missed (see the target column)")
    return all_ok


# -- main --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=float, default=None,
                    help="seconds from readiness until the Service address answers "
                         "(10; 2 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: D = 2 s, N = 1 and 100, and 1,000 as the stress")
    ap.add_argument("--scenarios", default="",
                    help="comma-separated direct:N / service:N (overrides the default set)")
    ap.add_argument("--warm-up", type=int, default=0, metavar="N",
                    help="before each scenario, N requests to another Service that is "
                         "ready (the same pod): an interceptor whose forwarding code has run "
                         "before, as in a cluster (0: a fresh process, the default); "
                         "direct-pod scenarios only")
    ap.add_argument("--open-concurrency", type=int, default=200,
                    help="client connections being opened at once (200)")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="seconds past D to wait for the responses before counting the "
                         "rest as lost (30)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each scenario, wait up to S seconds for other processes "
                         "to use < 10%% of a core (0: do not wait)")
    ap.add_argument("--pod", choices=("python", "nginx"), default="nginx",
                    help="what plays the pod: nginx (default), or the raw-Twisted "
                         "coldstart_pod.py, which needs four times its CPU per request")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let every process use both cores (by default the interceptor "
                         "runs alone on core 0 and everything else on core 1)")
    ap.add_argument("--profile", default="", metavar="SCENARIO",
                    help="attach py-spy (from the venv or PATH) to the interceptor during "
                         "this scenario's release, e.g. direct:1000")
    ap.add_argument("--perf", default="", metavar="SCENARIO",
                    help="record the interceptor with perf (Debian's linux-perf), kernel "
                         "included, during this scenario's release; report by system call "
                         "(not on the scenario --profile attaches py-spy to: perf then "
                         "records nothing)")
    ap.add_argument("--interceptor", default="worktree", metavar="SRC",
                    help="code to run: 'worktree' (this checkout as it is), a git ref "
                         "(exported read-only with git archive), or a directory holding "
                         "keda_proxy/ (see bench_proxy.py)")
    ap.add_argument("--reactor", metavar="NAME", default="keda-epoll",
                    help="twistd -r NAME: keda-epoll by default, as the image runs it; "
                         "'default' for twistd's own")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for keda-interceptor, for experiments "
                         "(repeatable), e.g. KEDA_HTTP_CONNECT_TIMEOUT=10s")
    ap.add_argument("--diag", action="store_true",
                    help="time the interceptor's garbage collections and long reactor "
                         "turns (a sitecustomize on its PYTHONPATH; keda_proxy unchanged)")
    ap.add_argument("--go-max-conns", type=int, default=0, metavar="N",
                    help="the Go reference's MaxConnsPerHost (0, the default, as the Go "
                         "interceptor: no bound, so each released request dials)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.set_defaults(go_binary=None)
    args = ap.parse_args(argv)
    if args.delay is None:
        args.delay = 2.0 if args.quick else 10.0
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    scenarios = scenarios_for(args)
    biggest = max(sc.n for sc in scenarios)
    limit = bl.raise_nofile(biggest + 1024)
    if limit < biggest + 100:
        sys.exit(f"this process's open-file limit is {limit}; {biggest:,} client "
                 "connections need more (the hard limit cannot be raised here)")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        bl.log("one core only: nothing pinned")
        args.pin = False
    if args.pin:
        os.sched_setaffinity(0, {1})
    if args.interceptor in ("", "worktree"):
        args.src = None
        args.where = bl.describe_source(None, None)
        return _run_all(args, argv, scenarios)
    # a git ref or a directory: exported into a temp dir (removed on exit)
    with bl.Teardown("keda-coldstart-src-") as td:
        args.src = bl.interceptor_source(args.interceptor, td.dir)
        args.where = bl.describe_source(args.src, args.interceptor)
        return _run_all(args, argv, scenarios)


def _run_all(args, argv, scenarios) -> int:
    if any(sc.ref == "go" for sc in scenarios) and args.go_binary is None:
        with bl.Teardown("keda-coldstart-go-") as td:  # the binary, for every go:N
            args.go_binary = bl.build_go(GO_SOURCE, td.dir, True, "leave out go:N")
            return _run_all(args, argv, scenarios)
    bl.log(f"keda-interceptor: {args.where}")
    results = {}
    for sc in scenarios:
        bl.log(f"scenario {sc.name} ({sc.label}, N={sc.n:,}, D={args.delay:g} s)")
        before = wait_quiet(args.wait_quiet) if args.wait_quiet else other_cpu_pct(0.5)
        if args.wait_quiet and before >= 10:
            bl.log(f"  the machine is not quiet ({before:.0f}% of a core used by others)")
        try:
            r = run_scenario(sc, args)
        except (RuntimeError, OSError) as e:
            bl.log(f"{sc.name} failed: {e}")
            r = {"failed": str(e).splitlines()[0]}
        r["scenario"] = sc
        r["other_before"] = before
        key, k = sc.name, 1
        while key in results:
            k += 1
            key = f"{sc.name}#{k}"
        results[key] = r
        if "lat" in r:
            lat = r["lat"]
            bl.log(f"  {sc.name}: {r['ok']}/{sc.n} 200, p50 "
                   f"{fmt_ms(percentile(lat, 50) if lat else None)} ms, max "
                   f"{fmt_ms(max(lat) if lat else None)} ms, lost {r['lost']}, after "
                   f"{r['concurrency_after']}")
    ok = print_report(args, results, argv)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    bl.run_main(main)
