"""
Kubernetes source at scale: initial sync, change-to-snapshot latency, RSS.

Run: ``.venv/bin/python benchmarks/bench_kube_sync.py [--churn-seconds 10]``

The fake API server (``tests/fakeapi.py``) runs in a child process, so its
objects and its JSON work count neither towards our RSS nor against our
GIL.  It holds 5,000 Services, 5,000 EndpointSlices (one per Service, two
ready addresses each) and 1,000 InterceptorRoutes.  This process runs the
real thing: L{KubernetesSource} with the real ``kubernetes`` client, a
StateStore on the reactor, over loopback HTTP.

Measured:

- initial sync: from C{startService} to the first snapshot with
  C{synced=True} holding every object;
- churn: 100 EndpointSlice updates per second (each gives one slice a new,
  unique address); the latency of one change runs from just before its
  PUT is sent to the swap of the first snapshot whose endpoints show that
  address (so it includes the PUT round trip, the watch event, the parse,
  the hop to the reactor and the store's coalescing delay);
- a re-list of everything after the history is compacted (every watch
  gets 410);
- the longest reactor stall (gap between ticks of a 10 ms LoopingCall)
  during sync, churn and re-list;
- RSS after sync, after churn, and the peak.

Exits 1 if p99 > 50 ms or peak RSS > 300 MB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import reactor  # noqa: E402  (an entry point may use the global reactor)
from twisted.internet.task import LoopingCall  # noqa: E402

from keda_proxy.state._kube_client import load_api_client  # noqa: E402
from keda_proxy.state._kube_source import KubernetesSource  # noqa: E402
from keda_proxy.state._model import ALL_KINDS  # noqa: E402
from keda_proxy.state._store import StateStore  # noqa: E402
from tests.fakeapi import endpoint_slice, interceptor_route, service  # noqa: E402
from tests.kubeconfig import write_kubeconfig  # noqa: E402

SERVICES = 5_000
ROUTES = 1_000
NAMESPACES = 50
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 300.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ns_of(i: int) -> str:
    return f"ns{i % NAMESPACES}"


def address(seq: int) -> str:
    """A unique address per change (seq < 2**22)."""
    return f"10.{128 + ((seq >> 16) & 63)}.{(seq >> 8) & 255}.{seq & 255}"


def the_slice(i: int, ips) -> dict:
    return endpoint_slice(f"svc{i}-abcde", ns_of(i), service=f"svc{i}", ips=list(ips))


class FakeProcess:
    """The fake API server in a child process; closing stdin stops it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakeapi", "--bookmark-interval", "30",
             "--history-size", "20000"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"fake API server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, conn, path, body) -> dict:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{path}: {resp.status} {data[:200]!r}")
        return json.loads(data)

    def seed(self) -> None:
        objs = []
        for i in range(SERVICES):
            objs.append(service(f"svc{i}", ns_of(i), ports=(("http", 80),)))
            objs.append(the_slice(i, [f"10.0.{i // 250}.{i % 250}",
                                      f"10.1.{i // 250}.{i % 250}"]))
        for i in range(ROUTES):
            objs.append(interceptor_route(f"route{i}", ns_of(i), service=f"svc{i}",
                                          hosts=[f"app{i}.example.com"]))
        conn = self.connection()
        try:
            for start in range(0, len(objs), 2_000):
                self.post(conn, "/fake/objects", objs[start:start + 2_000])
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Stalls:
    """The longest gap between ticks of a 10 ms LoopingCall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = None
        self._loop = LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.worst = max(self.worst, now - self._last)
        self._last = now

    def start(self) -> None:
        self.worst, self._last = 0.0, None
        self._loop.start(0.01)

    def stop(self) -> float:
        self._loop.stop()
        return self.worst


class Churn:
    """Sends EndpointSlice updates at a fixed rate from a thread; the store
    listener (on the reactor) matches each to the snapshot that shows it."""

    def __init__(self, fake: FakeProcess, store: StateStore, rate: float, seconds: float):
        self.fake, self.store = fake, store
        self.rate, self.seconds = rate, seconds
        self.pending: dict = {}  # reactor thread only
        self.latencies: list = []
        self.sent = 0
        self.late_sends = 0
        store.subscribe(self._swapped)

    def _expect(self, key, ip, t0) -> None:
        self.pending[key] = (ip, t0)

    def _swapped(self, old, new) -> None:
        if not self.pending:
            return
        now = time.perf_counter()
        for key, (ip, t0) in list(self.pending.items()):
            eps = new.endpoints.get(key)
            if eps is not None and any(ip == a for a, _ in eps.candidates.get("http", ())):
                self.latencies.append(now - t0)
                del self.pending[key]

    def run(self) -> None:
        """The sender thread."""
        conn = self.fake.connection()
        interval = 1.0 / self.rate
        n = int(self.rate * self.seconds)
        start = time.perf_counter()
        for seq in range(n):
            due = start + seq * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                self.late_sends += 1
            i = (seq * 7919) % SERVICES  # spread over services, no repeats back to back
            ip = address(seq)
            key = f"{ns_of(i)}/svc{i}"
            body = the_slice(i, [ip, f"10.1.{i // 250}.{i % 250}"])
            path = f"/apis/discovery.k8s.io/v1/namespaces/{ns_of(i)}/endpointslices/svc{i}-abcde"
            t0 = time.perf_counter()
            # Registered before the PUT is sent: callFromThread is FIFO, so
            # the reactor knows what to look for before the event can arrive.
            reactor.callFromThread(self._expect, key, ip, t0)
            conn.request("PUT", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"PUT {path}: {resp.status}")
            self.sent += 1
        conn.close()


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


async def wait_until(predicate, timeout, step=0.01):
    from twisted.internet.task import deferLater
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await deferLater(reactor, step, lambda: None)
    return True


async def bench(args, results) -> None:
    fake = FakeProcess()
    try:
        t = time.perf_counter()
        fake.seed()
        results["seed (fake server)"] = (f"{time.perf_counter() - t:.2f} s", "")
        tmp = tempfile.mkdtemp(prefix="bench-kube-")
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), fake.url)
        store = StateStore(clock=reactor, expected_kinds=frozenset(ALL_KINDS))
        source = KubernetesSource(store, reactor, reactor, load_api_client(kubeconfig))
        rss_before = rss_mb()
        stalls = Stalls()
        stalls.start()
        t0 = time.perf_counter()
        source.startService()
        ok = await wait_until(
            lambda: store.current.synced and len(store.current.endpoints) == SERVICES
            and len(store.current.routes) == ROUTES, timeout=120)
        sync_s = time.perf_counter() - t0
        sync_stall = stalls.stop()
        if not ok:
            raise SystemExit(f"initial sync did not complete: {source.status()}")
        results["initial sync (11,000 objects)"] = (f"{sync_s * 1000:.0f} ms", "")
        results["  longest reactor stall during sync"] = (f"{sync_stall * 1000:.0f} ms", "")
        results["RSS before sync"] = (f"{rss_before:.0f} MB", "")
        results["RSS after sync"] = (f"{rss_mb():.0f} MB", "")

        churn = Churn(fake, store, args.rate, args.churn_seconds)
        stalls.start()
        sender = threading.Thread(target=churn.run, name="churn", daemon=True)
        sender.start()
        await wait_until(lambda: not sender.is_alive(), timeout=args.churn_seconds * 3 + 30)
        await wait_until(lambda: not churn.pending, timeout=10)
        churn_stall = stalls.stop()
        lat = [x * 1000 for x in churn.latencies]
        if not lat:
            raise SystemExit("no change was observed")
        p99 = percentile(lat, 99)
        results[f"churn: {churn.sent} EndpointSlice updates at {args.rate:.0f}/s"] = (
            f"{len(lat)} seen, {len(churn.pending)} lost", "0 lost")
        results["  change -> swapped snapshot p50"] = (f"{percentile(lat, 50):.1f} ms", "")
        results["  change -> swapped snapshot p90"] = (f"{percentile(lat, 90):.1f} ms", "")
        results["  change -> swapped snapshot p99"] = (
            f"{p99:.1f} ms", f"<= {TARGET_P99_MS:.0f} ms")
        results["  change -> swapped snapshot max"] = (f"{max(lat):.1f} ms", "")
        results["  mean"] = (f"{statistics.fmean(lat):.1f} ms", "")
        results["  longest reactor stall during churn"] = (f"{churn_stall * 1000:.0f} ms", "")
        results["  sender fell behind schedule"] = (f"{churn.late_sends} times", "")
        results["RSS after churn"] = (f"{rss_mb():.0f} MB", "")

        # Compaction with every watch cut: all five kinds must re-list.
        lists = {k: w.stats.lists for k, w in source.watchers.items()}
        stalls.start()
        t0 = time.perf_counter()
        conn = fake.connection()
        fake.post(conn, "/fake/compact", {"drop_watches": True})
        conn.close()
        ok = await wait_until(
            lambda: all(w.stats.lists > lists[k] for k, w in source.watchers.items()),
            timeout=60)
        await wait_until(lambda: not store._pending or not store._pending.active(), 1)
        relist_s = time.perf_counter() - t0
        relist_stall = stalls.stop()
        if not ok:
            raise SystemExit(f"re-list did not complete: {source.status()}")
        results["re-list after compaction (410)"] = (f"{relist_s * 1000:.0f} ms", "")
        results["  longest reactor stall during re-list"] = (
            f"{relist_stall * 1000:.0f} ms", "")
        peak = peak_rss_mb()
        results["peak RSS (whole run)"] = (f"{peak:.0f} MB", f"<= {TARGET_RSS_MB:.0f} MB")
        results["_ok"] = p99 <= TARGET_P99_MS and peak <= TARGET_RSS_MB and not churn.pending
        t = time.perf_counter()
        await source.stopService()
        results["stopService"] = (f"{(time.perf_counter() - t) * 1000:.0f} ms", "<= 2000 ms")
    finally:
        fake.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="EndpointSlice changes per second")
    p.add_argument("--churn-seconds", type=float, default=10.0)
    args = p.parse_args()
    results: dict = {}
    failure = []

    from twisted.internet.defer import ensureDeferred

    def run():
        d = ensureDeferred(bench(args, results))
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if failure:
        failure[0].printTraceback()
        return 2
    ok = results.pop("_ok", False)
    width = max(len(k) for k in results) + 2
    print(f"\nKubernetes source: {SERVICES:,} Services, {SERVICES:,} EndpointSlices, "
          f"{ROUTES:,} InterceptorRoutes (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs)\n")
    print(f"{'measure':<{width}}{'result':>22}   target")
    print("-" * (width + 40))
    for name, (value, target) in results.items():
        print(f"{name:<{width}}{value:>22}   {target}")
    print("\n" + ("PASS" if ok else "FAIL: a target was missed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
