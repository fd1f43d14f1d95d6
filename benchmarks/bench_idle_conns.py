"""
Memory with many idle keep-alive client connections.

Run: ``.venv/bin/python benchmarks/bench_idle_conns.py [--conns 5000]``

Starts an nginx backend and keda-interceptor (200 routes, as in
``bench_proxy.py``; the interceptor under ``prlimit --nofile=65536:65536``,
lowered to the hard limit when that is smaller, since 5,000 client sockets
plus upstream ones exceed the usual 1,024), then
opens ``--conns`` keep-alive connections to the interceptor from an asyncio
client in this process.  Each connection sends one GET (``Host:
bench.local``) that is forwarded to the backend, reads the whole response,
and then stays open and idle.  The interceptor's VmRSS (from
``/proc/PID/status``) is read before (after one request) and with every
connection open; the target is <= 150 MB.  A sample of the idle
connections then sends a second request, to prove they were still usable,
and finally all are closed.

Pinning: keda-interceptor on ``--server-cpu`` (0); this client and the
nginx backend on ``--load-cpu`` (1).  Everything stays on loopback and the
run is bounded by ``--timeout`` (twisted.web closes connections idle for 60
s, so the idle phase must stay well under that).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

TARGET_MB = 150
REQUEST = (f"GET / HTTP/1.1\r\nHost: {bl.BENCH_HOST}\r\nUser-Agent: bench-idle\r\n"
           "Accept: */*\r\n\r\n").encode()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=5000, help="idle connections to open (5000)")
    ap.add_argument("--concurrency", type=int, default=200,
                    help="connections being opened / requests in flight at once (200)")
    ap.add_argument("--hold", type=float, default=3.0,
                    help="seconds to hold all connections idle before reading RSS (3)")
    ap.add_argument("--sample", type=int, default=100,
                    help="idle connections that send a second request at the end (100)")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound on the whole run (120)")
    ap.add_argument("--nofile", type=int, default=65536,
                    help="RLIMIT_NOFILE given to keda-interceptor via prlimit (65536)")
    ap.add_argument("--routes", type=int, default=200)
    ap.add_argument("--interceptor", default="worktree", metavar="SRC",
                    help="code to run: 'worktree', a git ref (e.g. HEAD), or a directory "
                         "(see bench_proxy.py --interceptor)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if RSS with all connections open is above {TARGET_MB} MB "
                         "or any connection failed")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-install", action="store_true")
    return ap.parse_args(argv)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length or chunked body; return its
    status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def open_one(port: int, sem: asyncio.Semaphore, conns: list, errors: list) -> None:
    async with sem:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            status = await asyncio.wait_for(read_response(reader), 30)
            if status != 200:
                errors.append(f"status {status}")
            conns.append((reader, writer))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(e).__name__}: {e}")


async def second_request(reader, writer) -> bool:
    if reader.at_eof():
        return False
    try:
        writer.write(REQUEST)
        return await asyncio.wait_for(read_response(reader), 10) == 200
    except Exception:  # noqa: BLE001
        return False


async def client(args, port: int, pid: int) -> dict:
    out = {}
    sem = asyncio.Semaphore(args.concurrency)
    conns, errors = [], []
    t0 = time.monotonic()
    await asyncio.gather(*(open_one(port, sem, conns, errors) for _ in range(args.conns)))
    out["open_s"] = time.monotonic() - t0
    out["opened"] = len(conns)
    out["errors"] = errors
    await asyncio.sleep(args.hold)
    out["rss_open"] = bl.rss_kb(pid)
    out["fds_open"] = bl.count_fds(pid)
    out["still_open"] = sum(1 for r, _ in conns if not r.at_eof())
    sample = conns[:: max(1, len(conns) // max(1, args.sample))][: args.sample]
    oks = await asyncio.gather(*(second_request(r, w) for r, w in sample))
    out["sample"] = (sum(oks), len(sample))
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    await asyncio.sleep(args.hold)
    out["rss_closed"] = bl.rss_kb(pid)
    out["fds_closed"] = bl.count_fds(pid)
    return out


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx"], install=not args.no_install)
    limit = bl.raise_nofile(args.conns + 1024)
    if limit < args.conns + 64:
        sys.exit(f"cannot raise this process's open-file limit to {args.conns + 64} "
                 f"(got {limit}); run as root or lower --conns")
    os.sched_setaffinity(0, {args.load_cpu})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and args.nofile > hard:
        # Raising a hard limit needs CAP_SYS_RESOURCE, which a sandbox may lack.
        bl.log(f"--nofile {args.nofile} is above the hard limit {hard}; using {hard}")
        args.nofile = hard
    if args.nofile < args.conns + 256:
        sys.exit(f"keda-interceptor's open-file limit {args.nofile} is too low for "
                 f"{args.conns} connections plus upstream ones")
    with bl.Teardown("keda-idle-", keep=args.keep) as td:
        (be_port,) = bl.free_ports(1)
        bl.log("starting nginx backend")
        bl.start_nginx(td.procs, "nginx-backend", tools["nginx"],
                       bl.nginx_backend_conf(td.dir / "backend", be_port), args.load_cpu)
        src = bl.interceptor_source(args.interceptor, td.dir)
        where = bl.describe_source(src, args.interceptor)
        bl.log(f"starting keda-interceptor ({where}) under prlimit --nofile={args.nofile}")
        k = bl.start_interceptor(td.procs, td.dir, be_port, args.server_cpu,
                                 routes=args.routes, nofile=args.nofile, src=src)
        pid, port = k["pid"], k["proxy_port"]
        bl.check_body(f"http://127.0.0.1:{port}/", bl.BENCH_HOST)
        time.sleep(1.0)
        before = bl.rss_kb(pid)
        fds_before = bl.count_fds(pid)
        bl.log(f"opening {args.conns} keep-alive connections, {args.concurrency} at a time")
        try:
            res = asyncio.run(asyncio.wait_for(client(args, port, pid), args.timeout))
        except asyncio.TimeoutError:
            sys.exit(f"did not finish in {args.timeout} s")
        alive = k["popen"].poll() is None

    opened, rss = res["opened"], res["rss_open"]["VmRSS"]
    delta = rss - before["VmRSS"]
    per_conn = delta / opened if opened else 0
    ok_rss = rss / 1024 <= TARGET_MB
    ok_conns = opened == args.conns and not res["errors"] and res["still_open"] == opened
    print()
    print("## keda-interceptor with idle keep-alive connections")
    print()
    print("- command: " + " ".join([Path(sys.executable).name,
                                    "benchmarks/bench_idle_conns.py", *sys.argv[1:]]))
    print(f"- keda-interceptor: {where}; {args.routes} InterceptorRoutes; started as "
          f"`taskset -c {args.server_cpu} prlimit --nofile={args.nofile}:{args.nofile} -- "
          "twistd -n --pidfile= keda-interceptor --manifests DIR`")
    print(f"- pinned: core {args.server_cpu}: keda-interceptor; core {args.load_cpu}: this "
          "asyncio client and the nginx backend (master + 1 worker)")
    print(f"- each connection: one GET forwarded to the backend, response read, then idle "
          f"for {args.hold:g}+ s; {args.concurrency} opened at a time")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| RSS before (after 1 request, no client connections) | {mb(before['VmRSS'])} |")
    print(f"| RSS with {opened:,} idle connections | {mb(rss)} |")
    print(f"| growth | {mb(delta)} ({per_conn:.1f} kB per connection) |")
    print(f"| peak RSS (VmHWM) | {mb(res['rss_open']['VmHWM'])} |")
    print(f"| RSS after the client closed them all | {mb(res['rss_closed']['VmRSS'])} |")
    print(f"| interceptor fds: before / open / after close | {fds_before} / "
          f"{res['fds_open']} / {res['fds_closed']} |")
    print(f"| time to open and use all connections | {res['open_s']:.1f} s |")
    print(f"| connections failed | {len(res['errors'])} |")
    print(f"| still open after the hold | {res['still_open']:,} / {opened:,} |")
    print(f"| sample answering a 2nd request | {res['sample'][0]} / {res['sample'][1]} |")
    print()
    if res["errors"]:
        first = sorted(set(res["errors"]))[:5]
        print(f"- errors (first kinds): {'; '.join(first)}")
    print(f"- target: RSS <= {TARGET_MB} MB with {args.conns:,} idle connections: "
          f"{'PASS' if ok_rss and ok_conns else 'FAIL'}")
    if not alive:
        print("- keda-interceptor died during the run")
    return 1 if args.check and not (ok_rss and ok_conns and alive) else 0


if __name__ == "__main__":
    bl.run_main(main)
