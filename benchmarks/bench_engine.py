"""
The forwarding engine's CPU cost per request, without sockets.

Drives the real Site, pipeline, pool and upstream protocol over in-memory
transports (the test harness), so the figure is pure Python work per
request: the part of ``bench_proxy.py``'s result that the code controls.

    .venv/bin/python benchmarks/bench_engine.py [--requests 20000] [--profile]
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from keda_proxy.metrics import ProxyMetrics  # noqa: E402
from tests.builders import endpoint_slice, load, route, service  # noqa: E402
from tests.proxyfakes import Harness  # noqa: E402

REQUEST = (b"GET /api/items?page=2 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 29\r\nConnection: keep-alive\r\n\r\n"
            b"hello from the nginx backend\n")


def setup(routes=200):
    h = Harness()
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)  # as in production
    rs = [route(name=f"r{i}", hosts=[f"r{i}.bench.local"]) for i in range(1, routes)]
    rs.append(route(name="r0", hosts=["bench.local"]))
    load(h.store, routes=rs, services=[service()], slices=[endpoint_slice()])
    proto, client = h.connect()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
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
