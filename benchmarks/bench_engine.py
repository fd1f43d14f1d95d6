"""
The forwarding engine's CPU cost per request, without sockets.

Drives the real Site, pipeline, pool and upstream protocol over in-memory
transports (the test harness), so the figure is pure Python work per
request: the part of ``bench_proxy.py``'s result that the code controls.

    .venv/bin/python benchmarks/bench_engine.py [--requests 20000] [--profile]
    .venv/bin/python benchmarks/bench_engine.py --cold 1000 [--profile]

``--cold N`` measures the cold-start release instead: N requests held (with
direct-pod routing) until one EndpointSlice update makes the Service ready,
then released a batch (16) per reactor turn, dialled (new pod connections for the
first turn, then reusing them, as in ``bench_cold_start.py``) and
answered, the pod answering each turn's requests before the next turn.
Only the release is timed: the CPU per request the proxy spends after the
update.

``--http2 M`` sends the requests over HTTP/2 instead (h2c, the client an
``h2`` library connection), M streams per read as ``h2load -m M`` does,
each forwarded on its own pooled HTTP/1.1 connection; only the proxy's
side is timed, not the client's.

``KEDA_BENCH_TRACING=1`` turns tracing on, with no collector answering.

``--instructions`` counts machine instructions per request instead, under
valgrind (``apt-get install valgrind``): the process runs N and 3N
requests and the difference is divided by 2N.  Unlike CPU time, the count
does not move with the host's load, so a change of 1-2% shows in one run.
``--source REF-OR-DIR`` (repeatable) counts other trees in the same run,
as ``bench_proxy.py --interceptor`` does (``worktree`` is this checkout):

    .venv/bin/python benchmarks/bench_engine.py --instructions --source HEAD --source worktree

With ``--cold N`` it counts the release of N held requests instead (the
same N held with and without the update, the difference divided by N).
"""

import argparse
import cProfile
import gc
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the tree under test: this checkout, or one given by --instructions --source
sys.path.insert(0, os.environ.get("KEDA_BENCH_SOURCE") or str(HERE.parent))

try:
    from keda_proxy._app import GC_THRESHOLDS
except ImportError:  # a tree from before it was named (--source)
    GC_THRESHOLDS = (100_000, 50, 1000)
from keda_proxy.ops._metrics import ProxyMetrics  # noqa: E402
from keda_proxy.state._model import KIND_ENDPOINT_SLICE  # noqa: E402
from tests.builders import endpoint_slice, load, route, service  # noqa: E402
from tests.proxyfakes import Harness  # noqa: E402

REQUEST = (b"GET /api/items?page=2 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 29\r\nConnection: keep-alive\r\n\r\n"
            b"hello from the nginx backend\n")


def bench_routes(n=200):
    """As in bench_proxy.py: r1..r(n-1) on their own hosts, and r0 on the
    Host the requests carry, last."""
    rs = [route(name=f"r{i}", hosts=[f"r{i}.bench.local"]) for i in range(1, n)]
    rs.append(route(name="r0", hosts=["bench.local"]))
    return rs


def setup_connected(routes=200):
    """The harness with the routes loaded, as in production, and one client
    connection to it."""
    h = Harness()
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)  # as in production
    if os.environ.get("KEDA_BENCH_TRACING"):
        # tracing on, with nothing exporting: the queue drops its oldest
        # spans, as with a collector that is down
        from keda_proxy.ops._tracing import Tracer

        h.pipeline.tracer = Tracer()
    rs = bench_routes(routes)
    load(h.store, routes=rs, services=[service()], slices=[endpoint_slice()])
    proto, client = h.connect()
    return h, proto, client


def setup(routes=200):
    h, proto, client = setup_connected(routes)
    proto.dataReceived(REQUEST)
    up = h.upstream()
    up.respond(RESPONSE)
    return h, proto, client, up


def run(n, h, proto, client, up):
    for _ in range(n):
        client.clear()
        up.transport.clear()
        proto.dataReceived(REQUEST)
        up.protocol.dataReceived(RESPONSE)
    assert client.value().endswith(b"backend\n"), client.value()[-200:]
    assert len(h.dials) == 1


H2_REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench.local"),
              (b":path", b"/api/items?page=2"), (b"user-agent", b"h2load"), (b"accept", b"*/*")]


class H2Bench:
    """An h2c client connection to the harness's proxy, and the M pooled
    upstream connections its streams go to."""

    def __init__(self, streams: int):
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.m = streams
        self.h, self.proto, self.client = setup_connected()
        c = self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        c.initiate_connection()
        c.increment_flow_control_window(1 << 30)
        self.proto.dataReceived(c.data_to_send())
        self.sid = 1
        self._send_round()
        self.ups = [self.h.upstream(i) for i in range(len(self.h.dials))]
        assert len(self.ups) == streams, len(self.ups)
        self._answer_round()
        c.receive_data(self.client.value())
        self.client.clear()

    def _send_round(self):
        c = self.c
        for _ in range(self.m):
            c.send_headers(self.sid, H2_REQUEST, end_stream=True)
            self.sid += 2
        self.proto.dataReceived(c.data_to_send())

    def _answer_round(self):
        for up in self.ups:
            up.transport.clear()
            up.protocol.dataReceived(RESPONSE)
        self.h.clock.advance(0)  # the flush at the end of the turn

    def run(self, n, profiler=None) -> float:
        """CPU seconds the proxy spends on C{n} requests (not counting the
        client's framing, which C{profiler} does not see either)."""
        spent = 0.0
        c = self.c
        done = 0
        for _ in range(n // self.m):
            for _ in range(self.m):
                c.send_headers(self.sid, H2_REQUEST, end_stream=True)
                self.sid += 2
            data = c.data_to_send()
            t0 = time.process_time()
            if profiler is not None:
                profiler.enable()
            self.proto.dataReceived(data)
            self._answer_round()
            if profiler is not None:
                profiler.disable()
            spent += time.process_time() - t0
            out = self.client.value()
            self.client.clear()
            done += sum(type(e).__name__ == "StreamEnded" for e in c.receive_data(out))
        assert done == n - n % self.m, done
        return spent


def one_turn(clock):
    """Run the calls due now, but not the ones they schedule: one reactor
    turn.  (C{Clock.advance(0)} would also run every C{callLater(0)} made
    meanwhile, releasing all held requests at once.)"""
    now = clock.seconds()
    for call in [c for c in clock.calls if c.getTime() <= now]:
        if call in clock.calls:  # not cancelled by an earlier one
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def cold_round(n, profiler=None, release=True):
    """One cold start of C{n} requests; returns the CPU seconds of the
    release (or only holds them, without C{release})."""
    from keda_proxy.steps import ProxySettings

    # No idle or response-header timers: task.Clock sorts its whole list on
    # every callLater, which would make a thousand of them the main cost.
    h = Harness(settings=ProxySettings(direct_pod_routing=True, response_header_timeout=0))
    h.site.timeOut = None  # a twisted.web Site (older trees)
    h.site.idle_timeout = 0  # the proxy's own HTTP/1.1 server
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)
    rs = bench_routes()
    load(h.store, routes=rs, services=[service()], slices=[endpoint_slice(ready=False)])
    clients = []
    for _ in range(n):
        proto, client = h.connect()
        proto.dataReceived(REQUEST)
        clients.append(client)
    ready = endpoint_slice()
    if not release:
        return 0.0
    busy = []  # every upstream connection
    if profiler is not None:
        profiler.enable()
    t0 = time.process_time()
    # the update: endpoints only, as a pod turning ready changes nothing else
    h.store.put(KIND_ENDPOINT_SLICE, ready.key, ready)
    h.store.flush()
    answered = 0
    while answered < n:
        # a turn: the pod's answers to what was sent, then the next batch
        for dial in h.dials[len(busy):]:
            busy.append(dial.succeed())
        for up in busy:
            if up.protocol.sink is not None:
                up.protocol.dataReceived(RESPONSE)
                answered += 1
        one_turn(h.clock)
    dt = time.process_time() - t0
    if profiler is not None:
        profiler.disable()
    done = sum(c.value().endswith(b"backend\n") for c in clients)
    assert done == n, (done, n)
    return dt


def instructions(src, *args: str) -> int:
    """Instructions of this script run with C{args}, in a fresh process
    under valgrind, with fixed hashing so that runs repeat exactly."""
    env = dict(os.environ, PYTHONHASHSEED="0", KEDA_BENCH_SOURCE=str(src or ""))
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, *args],
        env=env, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"I\s+refs:\s+([\d,]+)", out).group(1).replace(",", ""))


def count_instructions(sources, n: int, cold: int = 0) -> None:
    import benchlib

    benchlib.ensure_tools(["valgrind"])
    with tempfile.TemporaryDirectory(prefix="keda-engine-") as tmp:
        for spec in sources or ["worktree"]:
            src = benchlib.interceptor_source(spec, Path(tmp))
            if cold:
                # the same N requests held, then released or not
                per = (instructions(src, "--cold", str(cold), "--once", "1")
                       - instructions(src, "--cold", str(cold), "--once", "0")) / cold
                print(f"{spec}: {per:,.0f} instructions per released request "
                      f"(valgrind, a cold start of {cold})")
                continue
            per = (instructions(src, "--once", str(3 * n))
                   - instructions(src, "--once", str(n))) / (2 * n)
            print(f"{spec}: {per:,.0f} instructions per request "
                  f"(valgrind, {n} and {3 * n} requests)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cold", type=int, default=0, metavar="N")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--http2", type=int, default=0, metavar="M",
                        help="requests over HTTP/2, M streams per read")
    parser.add_argument("--source", action="append", metavar="REF-OR-DIR")
    parser.add_argument("--once", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # the collector as in production (keda_proxy._app): the state loaded
    # before the first request is frozen out of every collection
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()
    if args.instructions:
        count_instructions(args.source, 1000, args.cold)
        return
    if args.once is not None and args.cold:  # under valgrind: release or only hold
        cold_round(64)  # first-use costs (lazy imports, caches) in both runs
        cold_round(args.cold, release=bool(args.once))
        os._exit(0)  # no teardown: it would count what the two runs keep
    if args.once:
        state = setup()
        run(200, *state)
        run(args.once, *state)
        return
    if args.cold:
        cold_round(args.cold)  # warm up
        if args.profile:
            prof = cProfile.Profile()
            cold_round(args.cold, prof)
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            return
        best = min(cold_round(args.cold) for _ in range(5))
        print(f"{best / args.cold * 1e6:.1f} us CPU per released request "
              f"(best of 5 cold starts of {args.cold})")
        return
    if args.http2:
        bench = H2Bench(args.http2)
        bench.run(1000)  # warm up
        if args.profile:
            prof = cProfile.Profile()
            bench.run(args.requests, prof)
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
            return
        per = min(bench.run(args.requests) for _ in range(5)) / args.requests * 1e6
        print(f"HTTP/2, {args.http2} streams per read: {per:.1f} us CPU per request "
              f"(best of 5 x {args.requests}); {1e6 / per:,.0f} req/s per core, "
              f"before socket costs")
        return
    state = setup()
    run(1000, *state)  # warm up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.requests, *state)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)
        total = sum(v[1] for v in stats.stats.values())
        print(f"function calls per request: {total / args.requests:.0f}")
        return
    best = None
    for _ in range(5):
        t0 = time.process_time()
        run(args.requests, *state)
        dt = time.process_time() - t0
        best = dt if best is None else min(best, dt)
    per = best / args.requests * 1e6
    print(f"{per:.1f} us CPU per request (best of 5 x {args.requests}); "
          f"{1e6 / per:,.0f} req/s per core, before socket costs")


if __name__ == "__main__":
    main()
