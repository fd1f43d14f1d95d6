"""
The floor under a released request: what the kernel alone costs a relay
that does what the interceptor does per request after a cold start, with
no Twisted and almost no Python.

Run: ``.venv/bin/python benchmarks/relay_floor.py [--batch 16] [--rounds 2000]``

On loopback only, in a temp dir: an nginx backend (Debian package; the
pod), and a child process on ``--load-cpu`` (1) holding ``--batch`` client
connections and reading them with epoll (the clients).  This process, on
``--server-cpu`` (0), then does ``--rounds`` rounds of what one release turn
does: one ``send`` of a GET on each of ``--batch`` keep-alive connections
to nginx, then for each response one ``recv`` from nginx and one ``send``
of it to a client.  It prints its CPU per request (user and system):
compare it with the release's figures from ``bench_cold_start.py --diag``
(the later turns plus the time between them, per request).
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

REQUEST = (b"GET / HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bench-cold-start\r\n"
           b"Accept: */*\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n")


def clients(address, n: int, cpu: int) -> int:
    """A child that connects C{n} clients and reads them until the parent
    closes its ends; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    os.sched_setaffinity(0, {cpu})
    socks = [socket.create_connection(address) for _ in range(n)]
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    open_ = n
    while open_:
        for fd, _ in ep.poll():
            if not by_fd[fd].recv(65536):
                ep.unregister(fd)
                open_ -= 1
    os._exit(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="requests per turn (16, as released)")
    ap.add_argument("--rounds", type=int, default=2000, help="turns (2000)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args(argv)
    bl.check_cores(ap, args, ("server_cpu", "load_cpu"))
    tools = bl.ensure_tools(["nginx"])
    with bl.Teardown("keda-relay-floor-") as td:
        (port,) = bl.free_ports(1)
        bl.start_nginx(td.procs, "pod", tools["nginx"],
                       bl.nginx_backend_conf(td.dir / "pod", port), args.load_cpu)
        os.sched_setaffinity(0, {args.server_cpu})
        n = args.batch
        listener = socket.create_server(("127.0.0.1", 0), backlog=n)
        child = clients(listener.getsockname(), n, args.load_cpu)
        downs = [listener.accept()[0] for _ in range(n)]
        ups = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for s in downs + ups:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ep = select.epoll()
        index = {}
        for i, s in enumerate(ups):
            ep.register(s.fileno(), select.EPOLLIN)
            index[s.fileno()] = i
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.rounds):
            for s in ups:
                s.send(REQUEST)
            left = n
            while left:
                for fd, _ in ep.poll():
                    i = index[fd]
                    downs[i].send(ups[i].recv(65536))  # one small response per read
                    left -= 1
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
        for s in downs:
            s.close()
        os.waitpid(child, 0)
    total = args.rounds * n
    user = (after.ru_utime - before.ru_utime) / total * 1e6
    system = (after.ru_stime - before.ru_stime) / total * 1e6
    print(f"{total:,} requests relayed, {n} per turn: {user + system:.1f} us CPU each "
          f"(user {user:.1f}, system {system:.1f}); wall {wall / total * 1e6:.1f} us each")
    return 0


if __name__ == "__main__":
    bl.run_main(main)
