"""
What a new upstream connection costs the proxy: the pool's dial against
the bare system calls it needs, in the same process.

Run: ``.venv/bin/python benchmarks/bench_dial.py [--dials 200] [--rounds 15]
[--source REF-OR-DIR ...] [--reactor keda-epoll --reactor epoll]``

A cold start dials a pod's first connections in the turns that release the
held requests (about 30 to 40 for 1,000 requests held, in
``bench_cold_start.py``), so each dial's cost is paid by the requests
waiting behind it.  On loopback only: an nginx (Debian) backend on core 1,
and for each ``--source`` tree (``worktree`` by default: this checkout; a git
ref is exported, as for ``bench_proxy.py --interceptor``) and reactor a child
process on core 0 that alternates, ``--rounds`` times each:

- the reference: ``socket``, ``connect``, ``getpeername``, ``epoll_ctl``
  and ``TCP_NODELAY``, in a plain loop (the floor: what the kernel and the
  socket module cost);
- the proxy: ``ConnectionPool.connect`` for a pod's key, ``--dials`` times,
  until every connection's protocol is connected (the reactor runs if the
  dials need it).

Both are timed with the child's CPU clock, so that the time the reactor
waits in ``epoll_wait`` does not count.  The report gives the medians per
dial, and the median over the rounds of the proxy's cost over the reference
round just before it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402

SERVER_CPU, BACKEND_CPU = 0, 1


def cpu_now() -> float:
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


def raw_round(address, n: int) -> float:
    """CPU seconds per dial of the bare sequence; the sockets are closed
    afterwards, untimed."""
    ep = select.epoll()
    socks = []
    start = cpu_now()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(address)
        s.getpeername()
        ep.register(s.fileno(), select.EPOLLIN)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    per = (cpu_now() - start) / n
    for s in socks:
        s.close()
    ep.close()
    return per


def child(args) -> None:
    """One tree, one reactor: alternate the two rounds and print the
    medians as JSON."""
    os.sched_setaffinity(0, {SERVER_CPU})
    if args.reactor == "keda-epoll":
        from keda_proxy import epolldispatch
        reactor = epolldispatch.install()
    else:
        from twisted.internet import epollreactor
        epollreactor.install()
        from twisted.internet import reactor
    from keda_proxy.upstream._dial import StaticResolver, UpstreamEndpoints
    from keda_proxy.upstream._pool import ConnectionPool
    from keda_proxy.upstream._schemes import HTTP

    address = ("127.0.0.1", args.port)
    endpoints = UpstreamEndpoints(reactor, StaticResolver({}))
    pool = ConnectionPool(reactor, endpoints.endpoint_for)
    key = (HTTP, address[0], address[1], "app.bench")
    raw, proxy, failures = [], [], []

    def pool_round(i: int = 0) -> None:
        if i == args.rounds:
            reactor.stop()
            return
        raw.append(raw_round(address, args.dials))
        conns = []
        start = cpu_now()

        def connected(conn):
            conns.append(conn)
            if len(conns) == args.dials:
                done()

        def done():
            proxy.append((cpu_now() - start) / args.dials)
            for conn in conns:
                conn.transport.abortConnection()
            reactor.callLater(0.1, pool_round, i + 1)

        for _ in range(args.dials):
            pool.connect(key, 0.0).addCallbacks(connected, failures.append)
        if failures:
            print(json.dumps({"error": str(failures[0])}))
            reactor.stop()

    reactor.callWhenRunning(pool_round)
    reactor.run()
    print(json.dumps({"raw": statistics.median(raw), "proxy": statistics.median(proxy),
                      # each round against the reference round just before it
                      "ratio": statistics.median(p / r for p, r in zip(proxy, raw, strict=True))}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dials", type=int, default=200, help="dials per round (200)")
    ap.add_argument("--rounds", type=int, default=15, help="rounds of each kind (15)")
    ap.add_argument("--source", action="append", metavar="REF-OR-DIR",
                    help="tree to measure (repeatable; 'worktree' by default)")
    ap.add_argument("--reactor", action="append", choices=["keda-epoll", "epoll"],
                    help="reactor (repeatable; keda-epoll by default)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.reactor = args.reactor[0]
        child(args)
        return 0
    tools = bl.ensure_tools(["nginx"])
    bl.raise_nofile(4 * args.dials + 100)
    sources = args.source or ["worktree"]
    reactors = args.reactor or ["keda-epoll"]
    rows = []
    with bl.Teardown("keda-dial-") as td:
        port = bl.free_ports(1)[0]
        nginx = bl.start_nginx(td.procs, "nginx", tools["nginx"],
                               bl.nginx_backend_conf(td.dir / "nginx", port), BACKEND_CPU)
        bl.wait_listening(port, nginx["popen"], td.dir / "nginx" / "error.log")
        trees = {}
        for spec in sources:  # a tree named twice is measured twice
            if spec not in trees:
                trees[spec] = bl.interceptor_source(spec, td.dir)
            src = trees[spec]
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
            for reactor in reactors:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--port", str(port),
                     "--dials", str(args.dials), "--rounds", str(args.rounds),
                     "--reactor", reactor],
                    env=env, capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if "error" in result:
                    print(f"{spec} on {reactor}: {result['error']}", file=sys.stderr)
                    return 1
                rows.append((spec, reactor, result["raw"], result["proxy"], result["ratio"]))
    print(f"\n## New upstream connections: {args.dials} dials per round, "
          f"median of {args.rounds} rounds\n")
    print(f"- command: `{' '.join(['.venv/bin/python', *sys.argv])}`")
    print("- CPU per dial (the dialling process's CPU clock); the reference is the bare "
          "system-call sequence, measured in the same process before each of the proxy's "
          "rounds; the ratio is the median of each round's over the reference round before "
          "it\n")
    print("| tree | reactor | reference us | proxy us | proxy / reference |")
    print("|---|---|---:|---:|---:|")
    for spec, reactor, raw, proxy, ratio in rows:
        print(f"| {spec} | {reactor} | {raw * 1e6:.1f} | {proxy * 1e6:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
