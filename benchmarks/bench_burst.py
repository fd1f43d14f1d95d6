"""
Latency under bursts: keda-interceptor side by side with Go's
``httputil.ReverseProxy`` on one core, at 1, 32, 256 and 1,024 keep-alive
connections, in one run, one table.

Run: ``.venv/bin/python benchmarks/bench_burst.py [--duration 6] [--repeat 1]``

It starts, on loopback only and in a temp dir:

  - an nginx backend (Debian package) answering every GET with a 29-byte
    body (as ``bench_proxy.py``);
  - the Go reference, ``benchmarks/goproxy/main.go``: a stdlib-only
    ``httputil.ReverseProxy`` whose transport is set up as the Go
    interceptor's (MaxIdleConns 1000, MaxIdleConnsPerHost 200, a 500 ms dial
    timeout), built with Debian's ``golang-go`` and run with GOMAXPROCS=1;
  - keda-interceptor with 200 InterceptorRoutes, once per ``--reactor``
    (by default twistd's stock reactor and ``-r keda-epoll``), and once per
    ``--interceptor`` source (the working tree by default; a git ref such
    as ``HEAD`` gives a before/after in the same run);

then runs ``wrk -t1 --latency`` against each, interleaved, at every
``--connections`` count, and prints req/s, p50 and p99 with their ratios to
Go's (with ``--repeat``, each row is its median round by p99).  Every
proxy is pinned to ``--server-cpu`` (0), and wrk and the backend to
``--load-cpu`` (1), as in ``bench_proxy.py``.  The file-descriptor limit
is raised for wrk and every proxy so that 1,024 connections fit; each
proxy's listen backlog is what it asks for itself.

A second table gives, per row, the connections the backend accepted
during it (the proxy's upstream dials: its pool churn) and the kernel's
accept-queue overflows (``TcpExtListenOverflows``, machine-wide).
``--loop-stats`` adds what the interceptor's loop did, measured from the
outside by ``benchmarks/loopprobe/sitecustomize.py``: turn lengths, events
per turn, and each request's time behind its turn, waiting for an upstream
connection, upstream, and writing.  The probe costs CPU: use it to find
causes, not for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

HERE = Path(__file__).resolve().parent
GO_SOURCE = HERE / "goproxy" / "main.go"

#: the bound we hold to: the interceptor's p99 against Go's, at 256 and 1,024
P99_RATIO_MAX = 1.5
P99_CHECKED_AT = (256, 1024)

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %.0f, \"duration_us\": %.0f, \"connect\": %.0f, " ..
    "\"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, " ..
    "\"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"p999\": %.0f, \"max\": %.0f}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=6, help="seconds per measured row (6)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of unmeasured load before each row (1; 0 = none)")
    ap.add_argument("--connections", default="1,32,256,1024",
                    help="comma-separated wrk connection counts (1,32,256,1024)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every row, interleaved; the table shows each row's "
                         "median round by p99, with its ratios from that round")
    ap.add_argument("--interceptor", action="append", metavar="SRC",
                    help="code to run keda-interceptor from: 'worktree' (default), a git "
                         "ref of this checkout (e.g. HEAD), or a directory holding "
                         "keda_proxy/. Repeatable: one row per source and reactor")
    ap.add_argument("--reactor", action="append", metavar="NAME",
                    help="twistd -r NAME for keda-interceptor; 'stock' for twistd's own "
                         "choice (no -r). Repeatable; default: stock and keda-epoll")
    ap.add_argument("--row", action="append", metavar="SRC@REACTOR",
                    help="one keda-interceptor row, instead of every --interceptor with "
                         "every --reactor (repeatable), e.g. HEAD@stock")
    ap.add_argument("--no-go", action="store_true", help="leave out the Go reference")
    ap.add_argument("--routes", type=int, default=200, help="InterceptorRoutes loaded (200)")
    ap.add_argument("--server-cpu", type=int, default=0, help="core of the proxies (0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="core of wrk and the backend (1)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="wrk's --timeout in seconds; slower answers count as errors (5)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for keda-interceptor (repeatable)")
    ap.add_argument("--loop-stats", action="store_true",
                    help="run keda-interceptor with KEDA_LOOP_STATS=1 and print its loop "
                         "statistics (from its log) after each of its rows")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 unless every interceptor row's p99 is <= {P99_RATIO_MAX}x "
                         f"Go's at {' and '.join(map(str, P99_CHECKED_AT))} connections, "
                         "with 0 errors")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each round, wait up to S seconds for other processes to "
                         "use under 10%% of a core (0: do not wait)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing nginx/wrk/golang-go")
    args = ap.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.interceptor = args.interceptor or ["worktree"]
    args.reactor = args.reactor or ["stock", "keda-epoll"]
    if args.row:
        args.rows = [tuple(r.rsplit("@", 1)) if "@" in r else (r, "stock") for r in args.row]
        args.interceptor = list(dict.fromkeys(src for src, _ in args.rows))
    else:
        args.rows = [(src, r) for src in args.interceptor for r in args.reactor]
    bl.check_cores(ap, args)
    return args


# -- the Go reference -----------------------------------------------------------------


def backend_conf(dir: Path, port: int) -> Path:
    """L{bl.nginx_backend_conf}'s backend, plus C{/__status} (stub_status)
    to count the connections it accepts."""
    body = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /__status {{
            stub_status;
        }}
        location / {{
            default_type text/plain;
            return 200 "{bl.BODY.rstrip()}\\n";
        }}
    }}"""
    return bl.write_nginx(dir, body)


def backend_accepts(port: int) -> int:
    """Connections the backend has accepted so far (stub_status), less the
    one asking."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__status", timeout=5) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[0]) - 1


def listen_overflows() -> int:
    """TcpExtListenOverflows: SYNs or handshakes dropped because an accept
    queue was full (machine-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def start_go(td: bl.Teardown, binary: str, backend_port: int, cpu: int) -> dict:
    (port,) = bl.free_ports(1)
    env = dict(os.environ, GOMAXPROCS="1")
    logfile = td.dir / "goproxy.log"
    p = td.procs.start("goproxy", ["taskset", "-c", str(cpu), binary,
                                   "-listen", f"127.0.0.1:{port}",
                                   "-upstream", f"127.0.0.1:{backend_port}"],
                       logfile, env=env)
    bl.wait_listening(port, p, logfile)
    return {"pid": p.pid, "port": port}


# -- wrk ---------------------------------------------------------------------------


def run_wrk(tools, url, conns, duration, cpu, script, timeout):
    argv = ["taskset", "-c", str(cpu), tools["wrk"], "-t1", f"-c{conns}", f"-d{duration}s",
            "--latency", "--timeout", f"{timeout:g}s", "-s", str(script),
            "-H", f"Host: {bl.BENCH_HOST}", url]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=duration + 60)
    except BaseException:
        bl._signal_group(p.pid, 9)
        p.wait()
        raise
    text = out.decode(errors="replace")
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{text}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return r


# -- the run -------------------------------------------------------------------------


class Burst:
    def __init__(self, args, td: bl.Teardown, tools):
        self.args = args
        self.td = td
        self.tools = tools
        self.script = td.dir / "report.lua"
        self.script.write_text(WRK_LUA)
        self.targets = {}  # key -> {"label", "url", "pids", "log"?}
        self.sources = {}

    def start(self):
        a, td = self.args, self.td
        (be_port,) = bl.free_ports(1)
        bl.log("starting nginx backend")
        self.backend_port = be_port
        backend = bl.start_nginx(td.procs, "nginx-backend", self.tools["nginx"],
                                 backend_conf(td.dir / "backend", be_port), a.load_cpu)
        bl.wait_listening(be_port, backend["popen"], td.dir / "backend" / "stdout.log")
        self.backend_pids = [backend["master"], *backend["workers"]]
        if not a.no_go:
            binary = bl.build_go(GO_SOURCE, td.dir, not a.no_install, "pass --no-go")
            g = start_go(td, binary, be_port, a.server_cpu)
            self.targets["go"] = {"label": "Go ReverseProxy", "url":
                                  f"http://127.0.0.1:{g['port']}/", "pids": [g["pid"]]}
        srcs = {spec: bl.interceptor_source(spec, td.dir) for spec in a.interceptor}
        extra_env = dict(kv.split("=", 1) for kv in a.env)
        if a.loop_stats:
            extra_env["PYTHONPATH"] = os.pathsep.join(
                [str(HERE / "loopprobe")]
                + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        for n, (spec, reactor) in enumerate(a.rows):
            opts = [] if reactor == "stock" else ["-r", reactor]
            tags = [reactor] + ([spec] if len(a.interceptor) > 1 else [])
            key = f"keda[{','.join(tags)}]"
            label = f"keda-interceptor [{', '.join(tags)}]"
            src = srcs[spec]
            self.sources[label] = bl.describe_source(src, spec)
            bl.log(f"starting {label}")
            env = dict(extra_env)
            stats = None
            if a.loop_stats:
                stats = env["KEDA_LOOP_STATS"] = str(td.dir / f"loop-{n}.jsonl")
            k = self._start_interceptor(be_port, src, label, opts, env, td.dir / f"keda-{n}")
            self.targets[key] = {"label": label, "url": f"http://127.0.0.1:{k['proxy_port']}/",
                                 "pids": [k["pid"]], "stats": stats}
        for t in self.targets.values():
            bl.check_body(t["url"], bl.BENCH_HOST)

    def _start_interceptor(self, be_port, src, label, opts, extra_env, workdir):
        """One interceptor, with its own manifests (a reload of a file that
        another one's start rewrites could catch it half written)."""
        a, td = self.args, self.td
        old = {k: os.environ.get(k) for k in extra_env}
        os.environ.update(extra_env)
        try:
            workdir.mkdir()
            return bl.start_interceptor(td.procs, workdir, be_port, a.server_cpu,
                                        routes=a.routes, nofile=self.nofile, src=src, name=label,
                                        twistd_opts=opts)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def measure(self, key, conns):
        a = self.args
        t = self.targets[key]
        if a.warmup:
            run_wrk(self.tools, t["url"], conns, a.warmup, a.load_cpu, self.script, a.timeout)
        stats = t.get("stats")
        if stats:
            os.kill(t["pids"][0], signal.SIGUSR2)  # reset
        accepts, overflows = backend_accepts(self.backend_port), listen_overflows()
        with bl.CpuMeter({"server": t["pids"], "backend": self.backend_pids}) as meter:
            r = run_wrk(self.tools, t["url"], conns, a.duration, a.load_cpu, self.script,
                        a.timeout)
        r["cpu"] = meter.pct
        r["dials"] = backend_accepts(self.backend_port) - accepts
        r["overflows"] = listen_overflows() - overflows
        if stats:
            r["loop"] = read_loop_stats(t["pids"][0], Path(stats))
        return r


def read_loop_stats(pid: int, path: Path):
    """Ask the probe for its statistics since the reset; its last line."""
    size = path.stat().st_size if path.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > size:
            time.sleep(0.05)
            return json.loads(path.read_text().splitlines()[-1])
        time.sleep(0.05)
    return None


def wait_quiet(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while seconds > 0:
        with bl.CpuMeter({}) as m:
            time.sleep(1.0)
        if m.pct["other"] < 10 or time.monotonic() > deadline:
            return
        bl.log(f"other processes use {m.pct['other']:.0f}% of a core; waiting for quiet")
        time.sleep(3)


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def per_cpu(r) -> str:
    """Requests per CPU-second of the proxy: what it could serve with a
    core to itself, which other load on the machine changes less than
    req/s."""
    cpu = r["cpu"]["server"]
    return f"{r['rps'] * 100 / cpu:,.0f}" if cpu > 1 else "-"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def table(results, keys, labels, conns_list):
    """Markdown table; results is {(key, conns): r}, each r with the Go row
    of the same connection count under r["go"]."""
    head = ("| conns | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU % "
            "| req per CPU-s | other CPU % | req/s vs Go | p50 vs Go | p99 vs Go |")
    rows = [head, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in conns_list:
        for key in keys:
            r = results.get((key, c))
            if r is None:
                continue
            go = r.get("go")
            if go is None or key == "go":
                rr = r50 = r99 = "-" if go is None else "1.00"
            else:
                rr, r50, r99 = ratio(r["rps"], go["rps"]), ratio(r["p50"], go["p50"]), \
                    ratio(r["p99"], go["p99"])
            rows.append(f"| {c} | {labels[key]} | {r['rps']:,.0f} | {fmt_ms(r['p50'])} | "
                        f"{fmt_ms(r['p99'])} | {fmt_ms(r['p999'])} | {r['errors']} | "
                        f"{r['cpu']['server']:.0f} | {per_cpu(r)} | {r['cpu']['other']:.0f} | "
                        f"{rr} | {r50} | {r99} |")
    return "\n".join(rows)


def diagnostics(results, keys, labels, conns_list, loop: bool):
    head = "| conns | target | backend accepts (dials) | listen overflows |"
    sep = "|---:|---|---:|---:|"
    if loop:
        head += (" turn ms p50/p99/max | events per turn p50/max | behind turn ms p99 "
                 "| pool wait ms p99 | upstream ms p50/p99 | write ms p99 | idle closed "
                 "| GC gen2 pauses (max ms) |")
        sep += "---:|---:|---:|---:|---:|---:|---:|---:|"
    rows = [head, sep]
    for c in conns_list:
        for key in keys:
            r = results.get((key, c))
            if r is None:
                continue
            row = f"| {c} | {labels[key]} | {r['dials']:,} | {r['overflows']:,} |"
            s = r.get("loop")
            if loop and s:
                t, e = s["turn_ms"], s["events_per_turn"]
                row += (f" {t['p50']:.2f}/{t['p99']:.2f}/{t['max']:.1f} | {e['p50']:.0f}/"
                        f"{e['max']:.0f} | {s['req_pos_in_turn_ms']['p99']:.2f} | "
                        f"{s['req_pool_ms']['p99']:.2f} | {s['req_upstream_ms']['p50']:.2f}/"
                        f"{s['req_upstream_ms']['p99']:.2f} | {s['req_write_ms']['p99']:.2f} | "
                        f"{s['pool']['closed_idle']:,} | {s['gc_ms']['2']['n']} "
                        f"({s['gc_ms']['2']['max']:.0f}) |")
            elif loop:
                row += " - | - | - | - | - | - | - | - |"
            rows.append(row)
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx", "wrk"], install=not args.no_install)
    nofile = bl.raise_nofile(65536)
    need = max(args.connections) * 2 + 100
    if nofile < need:
        sys.exit(f"RLIMIT_NOFILE is {nofile}; {need} needed for {max(args.connections)} "
                 "connections (raise the hard limit: ulimit -Hn)")
    with bl.Teardown("keda-burst-", keep=args.keep) as td:
        bench = Burst(args, td, tools)
        bench.nofile = nofile
        bench.start()
        keys = list(bench.targets)
        labels = {k: t["label"] for k, t in bench.targets.items()}
        idle_bg = bl.CpuMeter({})
        with idle_bg:
            time.sleep(1.0)
        runs = {}
        for rep in range(args.repeat):
            wait_quiet(args.wait_quiet)
            for conns in args.connections:
                for key in keys:
                    bl.log(f"round {rep + 1}/{args.repeat}: {labels[key]}, {conns} conn(s), "
                           f"{args.duration}s")
                    r = bench.measure(key, conns)
                    runs.setdefault((key, conns), []).append(r)
                    if r.get("loop"):
                        bl.log(f"  loop: {json.dumps(r['loop'])}")
        results = {}
        for key, rs in runs.items():
            rs = sorted(rs, key=lambda r: r["p99"])
            results[key] = rs[len(rs) // 2]
        for (_key, conns), r in results.items():
            r["go"] = results.get(("go", conns))

        print()
        print("## Latency under bursts: keda-interceptor and Go's ReverseProxy, one core each")
        print()
        print("- command: " + " ".join([Path(sys.executable).name,
                                        "benchmarks/bench_burst.py", *sys.argv[1:]]))
        import platform
        print(f"- {os.cpu_count()} cores; Linux {platform.release()}; Python "
              f"{platform.python_version()}; somaxconn "
              f"{Path('/proc/sys/net/core/somaxconn').read_text().strip()}; every process "
              f"at nice {os.nice(0)}")
        for label, where in bench.sources.items():
            print(f"- {label}: {where}")
        print(f"- wrk -t1 keep-alive GET, {args.duration}s per row after {args.warmup}s "
              f"warm-up, --timeout {args.timeout:g}s; {args.repeat} interleaved round(s)"
              + (" (each row: its median round by p99)"
                 if args.repeat > 1 else ""))
        print(f"- pinned: every proxy on core {args.server_cpu} (Go with GOMAXPROCS=1, one "
              f"twistd process each); wrk and the nginx backend on core {args.load_cpu}")
        print(f"- other processes used {idle_bg.pct['other']:.0f}% of a core while idle")
        print()
        print(table(results, keys, labels, args.connections))
        print()
        print(diagnostics(results, keys, labels, args.connections, args.loop_stats))
        print()
        failed = False
        if "go" in bench.targets:
            for key in keys:
                if key == "go":
                    continue
                for c in P99_CHECKED_AT:
                    r = results.get((key, c))
                    if r is None or r["go"] is None:
                        continue
                    q = r["p99"] / r["go"]["p99"]
                    ok = q <= P99_RATIO_MAX and r["errors"] == 0
                    failed = failed or not ok
                    print(f"- {labels[key]} at {c} conns: p99 {q:.2f}x Go's "
                          f"(target <= {P99_RATIO_MAX}), {r['errors']} errors: "
                          f"{'PASS' if ok else 'FAIL'}")
        stolen = [f"{labels[k]}/{c} ({r['cpu']['steal']:.0f}%)"
                  for (k, c), r in results.items() if r["cpu"].get("steal", 0) > 2]
        if stolen:
            print("- the hypervisor stole CPU during: " + ", ".join(stolen))
        busy = [f"{labels[k]}/{c}" for (k, c), r in results.items() if r["cpu"]["other"] > 10]
        if busy:
            print("- other load above 10% of a core during: " + ", ".join(busy))
        sys.stdout.flush()
        return 1 if args.check and failed else 0


if __name__ == "__main__":
    bl.run_main(main)
