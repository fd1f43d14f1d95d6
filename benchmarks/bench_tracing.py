"""
What tracing costs with the collector down: requests/s with tracing on
against tracing off, in the same process.

Run: ``.venv/bin/python benchmarks/bench_tracing.py [--processes 3] [--rounds 6]``

Why the same process: two processes of the same code differ by up to 15%
in req/s on this kind of machine (memory layout, hash seed), more than
tracing costs, so rows of separate processes (``bench_proxy.py --env``)
need many processes to agree.  Here each interceptor process serves both
sides of the comparison.

It starts, on loopback only and in a temp dir:

  - an nginx backend (Debian package), as in ``bench_proxy.py``;
  - for each ``--reactor`` (default: twistd's epoll and keda-epoll),
    ``--processes`` keda-interceptors (200 routes, as ``bench_proxy.py``
    starts them) with ``OTEL_EXPORTER_OTLP_TRACES_ENABLED=true``,
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf`` and the traces
    endpoint on a closed loopback port: the collector is down, and the
    exporter retries in its thread;
  - a generated ``sitecustomize.py`` on each interceptor's PYTHONPATH (the
    benchmark's instrument; keda_proxy is unchanged): SIGUSR2 swaps the
    pipeline's tracer with None, which is what tracing off is, and each
    swap appends to a file how many traces were started so far, so the
    script checks that every "on" run traced all its requests and every
    "off" run none.

Each process gets ``--rounds`` rounds of two wrk runs (32 connections,
``--duration`` s each): off then on, then on then off in the next round,
and so on.  Reported per reactor: the medians of req/s and of requests per
CPU-second of the interceptor's own, on and off, and their ratios (the
target: on / off >= 0.9), with each process's ratio.

Memory: one more interceptor per reactor, started without tracing, gets
the same rounds (``--rounds`` x 2 runs); then the peak RSS (VmHWM) of the
traced processes (median) is compared with its.

Pinning: the interceptors on ``--server-cpu`` (0), wrk and nginx on
``--load-cpu`` (1).  ``--check`` exits 1 when a ratio is under 0.9.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_proxy as bp  # noqa: E402
import benchlib as bl  # noqa: E402

TARGET = 0.9

TOGGLE = r'''
import signal

import keda_proxy._app as _app
import keda_proxy.ops._tracing as _tracing

_started = [0]
_start = _tracing.Tracer.start


def _counting_start(self, traceparent):
    _started[0] += 1
    return _start(self, traceparent)


_tracing.Tracer.start = _counting_start
_init = _app.Interceptor.__init__


def _init_and_listen(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    pipeline, parked = self.pipeline, [None]

    def toggle(signum, frame):
        pipeline.tracer, parked[0] = parked[0], pipeline.tracer
        with open(%(status)r, "a") as f:
            f.write("%%d\n" %% _started[0])

    signal.signal(signal.SIGUSR2, toggle)


_app.Interceptor.__init__ = _init_and_listen
'''


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=3, help="interceptors per reactor (3)")
    ap.add_argument("--rounds", type=int, default=6, help="off/on pairs per process (6)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    ap.add_argument("--reactor", action="append", metavar="NAME",
                    help="twistd -r NAME; repeat for several (default: epoll and keda-epoll)")
    ap.add_argument("--server-cpu", type=int, default=0, help="core of the interceptors (0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="core of wrk and nginx (1)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if a ratio is < {TARGET}")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args(argv)
    args.reactor = args.reactor or ["epoll", "keda-epoll"]
    bl.check_cores(ap, args, ("server_cpu", "load_cpu"))
    return args


def cpu_seconds(pid: int) -> float:
    return bl.proc_ticks(pid) / os.sysconf("SC_CLK_TCK")


def untraced_peak_kb(args, tools, td, reactor: str, backend_port: int) -> int:
    """The peak RSS of an interceptor without tracing, loaded as the traced
    ones are."""
    k = bl.start_interceptor(td.procs, td.dir, backend_port, args.server_cpu,
                             twistd_opts=["-r", reactor],
                             name=f"keda-interceptor -r {reactor} untraced")
    url = f"http://127.0.0.1:{k['proxy_port']}/"
    for _ in range(1 + 2 * args.rounds):  # the warm-up, then both runs of each round
        bp.run_wrk(tools, url, 32, args.duration, args.load_cpu, td.dir / "report.lua")
    return bl.rss_kb(k["pid"])["VmHWM"]


def measure(args, tools, td, reactor: str, n: int, backend_port: int, closed_port: int):
    """One interceptor's rounds: a list of (tracing on?, req/s, req per CPU-s, requests),
    and its peak RSS in kB."""
    site = td.dir / f"site-{reactor}-{n}"
    site.mkdir()
    status = site / "started"
    (site / "sitecustomize.py").write_text(TOGGLE % {"status": str(status)})
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENABLED": "true",
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{closed_port}/v1/traces",
           "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get(
               "PYTHONPATH")])])}
    name = f"keda-interceptor -r {reactor} #{n}"
    k = bl.start_interceptor(td.procs, td.dir, backend_port, args.server_cpu,
                             twistd_opts=["-r", reactor], name=name, extra_env=env)
    url, pid = f"http://127.0.0.1:{k['proxy_port']}/", k["pid"]
    bp.run_wrk(tools, url, 32, 1, args.load_cpu, td.dir / "report.lua")  # warm-up
    on, runs = True, []
    for r in range(args.rounds):
        for want in ((False, True) if r % 2 == 0 else (True, False)):
            if want != on:
                os.kill(pid, signal.SIGUSR2)
                on = want
                time.sleep(0.2)
            before = cpu_seconds(pid)
            w = bp.run_wrk(tools, url, 32, args.duration, args.load_cpu, td.dir / "report.lua")
            used = cpu_seconds(pid) - before
            if w["errors"]:
                raise RuntimeError(f"{name}: {w['errors']} errors")
            runs.append((on, w["rps"], w["requests"] / used if used else 0.0, w["requests"]))
    os.kill(pid, signal.SIGUSR2)  # one more line: the count after the last run
    time.sleep(0.2)
    check_toggles(name, status, runs)
    return runs, bl.rss_kb(pid)["VmHWM"]


def check_toggles(name: str, status: Path, runs) -> None:
    """Every "on" run started a trace per request; every "off" run none."""
    counts = [int(line) for line in status.read_text().split()]
    # one line as each phase begins (the first run is "off": the process
    # starts with tracing on) and one after the last
    phases, last = [], None
    for on, _, _, requests in runs:
        if on != last:
            phases.append([on, 0])
            last = on
        phases[-1][1] += requests
    if len(counts) != len(phases) + 1:
        raise RuntimeError(f"{name}: {len(counts)} switches seen, {len(phases) + 1} expected")
    for i, (on, requests) in enumerate(phases):
        traced = counts[i + 1] - counts[i]
        if (on and traced < requests) or (not on and traced):
            raise RuntimeError(f"{name}: a tracing-{'on' if on else 'off'} phase of "
                               f"{requests} requests started {traced} traces")


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx", "wrk"])
    results, peaks, untraced = {}, {}, {}
    with bl.Teardown("keda-bench-tracing-", keep=args.keep) as td:
        (td.dir / "report.lua").write_text(bp.WRK_LUA)
        backend_port, closed_port = bl.free_ports(2)
        bl.log("starting nginx backend")
        bl.start_nginx(td.procs, "nginx-backend", tools["nginx"],
                       bl.nginx_backend_conf(td.dir / "backend", backend_port), args.load_cpu)
        for reactor in args.reactor:
            for n in range(1, args.processes + 1):
                bl.log(f"-r {reactor}, process {n}/{args.processes}: {args.rounds} rounds")
                runs, peak = measure(args, tools, td, reactor, n, backend_port, closed_port)
                results.setdefault(reactor, []).append(runs)
                peaks.setdefault(reactor, []).append(peak)
            bl.log(f"-r {reactor}, without tracing: the same load, for its peak RSS")
            untraced[reactor] = untraced_peak_kb(args, tools, td, reactor, backend_port)
    print()
    print("## Tracing on, collector down, against tracing off, in the same process")
    print()
    print("- command: " + " ".join(["python", "benchmarks/bench_tracing.py", *sys.argv[1:]]))
    print(f"- wrk -t1 -c32, {args.duration}s per run; {args.rounds} off/on rounds on each of "
          f"{args.processes} processes per reactor; 200 routes; interceptors on core "
          f"{args.server_cpu}, wrk and nginx on core {args.load_cpu}")
    print()
    print("| reactor | off req/s | on req/s | on ÷ off | off req/CPU-s | on req/CPU-s | on ÷ off "
          "| per process (req/s) | peak RSS MB, untraced / traced |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    failed = False
    for reactor, procs in results.items():
        def med(on, i, runs):
            return statistics.median(r[i] for r in runs if r[0] is on)

        every = [r for runs in procs for r in runs]
        rps = med(True, 1, every) / med(False, 1, every)
        cpu = med(True, 2, every) / med(False, 2, every)
        each = ", ".join(f"{med(True, 1, runs) / med(False, 1, runs):.3f}" for runs in procs)
        failed = failed or rps < TARGET or cpu < TARGET
        print(f"| {reactor} | {med(False, 1, every):,.0f} | {med(True, 1, every):,.0f} | "
              f"**{rps:.3f}** | {med(False, 2, every):,.0f} | {med(True, 2, every):,.0f} | "
              f"{cpu:.3f} | {each} | {untraced[reactor] / 1024:.1f} / "
              f"{statistics.median(peaks[reactor]) / 1024:.1f} |")
    print()
    print(f"- target: on ÷ off >= {TARGET}: {'FAIL' if failed else 'PASS'}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    bl.run_main(main)
