"""
Forwarding throughput and latency: keda-interceptor side by side with
nginx, in one run, one table.

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--duration 10] [--connections 32]``

It starts, on loopback only and in a temp dir:

  - an nginx backend (Debian package) answering every GET with a 29-byte
    body, access log off;
  - nginx as a reverse proxy in front of it, with upstream keep-alive;
  - keda-interceptor (this checkout's ``twistd keda-interceptor``) with 200
    InterceptorRoutes from generated manifests; route ``bench.local``
    points at the backend;

then runs ``wrk`` (keep-alive, small GET, ``Host: bench.local``) against
(a) the backend directly, (b) nginx-as-proxy, (c) keda-interceptor, at
``--connections`` and at 1 connection, prints one table, and tears
everything down (also on Ctrl-C, SIGTERM or an error).

Pinning (2-core machine; see docs/performance.md): the server under test is
alone on ``--server-cpu`` (0); wrk is on ``--load-cpu`` (1); the backend
nginx shares the load core while a proxy is measured, and is moved to the
server core for the "backend direct" rows, so that every row measures
"one server on one core".

Missing nginx/wrk are installed with apt-get when run as root (or the
command to run is printed).  ``--profile FILE`` adds one more
keda-interceptor run under py-spy and prints its hot spots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

TARGETS = ("direct", "nginx", "hello", "rawproxy", "keda")
DEFAULT_TARGETS = ("direct", "nginx", "keda")
LABELS = {"direct": "backend direct", "nginx": "nginx-proxy", "keda": "keda-interceptor",
          "hello": "twisted.web hello (no proxy)", "rawproxy": "raw Twisted proxy"}

#: The targets for keda-interceptor at 32 connections.
TARGET_RPS = 8000
TARGET_P99_MS = 15.0

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %.0f, \"duration_us\": %.0f, \"connect\": %.0f, " ..
    "\"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, " ..
    "\"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"max\": %.0f, \"mean\": %.1f}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run (10)")
    ap.add_argument("--connections", type=int, default=32,
                    help="wrk connections for the main rows (32)")
    ap.add_argument("--no-single", action="store_true",
                    help="skip the 1-connection rows")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of unmeasured load before each run (1; 0 = none)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each row N times, interleaved; report the median by req/s")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma-separated rows: direct, nginx, keda (the default), plus the "
                         "yardsticks hello (twisted.web answering by itself) and rawproxy "
                         "(a byte-moving Twisted proxy), see yardsticks.py; 'all' for all")
    ap.add_argument("--interceptor", action="append", metavar="SRC",
                    help="code to run keda-interceptor from: 'worktree' (default: this "
                         "checkout as it is), a git ref of this checkout (exported with "
                         "git archive, e.g. HEAD), or a directory holding keda_proxy/. "
                         "Repeat to compare engines side by side, one row each")
    ap.add_argument("--env", action="append", metavar="K=V[,K=V]",
                    help="environment for keda-interceptor; repeat to compare settings side "
                         "by side (e.g. tracing on and off): one row per value ('' for none)")
    ap.add_argument("--reactor", action="append", metavar="NAME",
                    help="run keda-interceptor with twistd -r NAME, e.g. epoll (the one twistd "
                         "picks on Linux without -r, the default here) or keda-epoll. Repeat "
                         "to compare reactors side by side: one row per source and reactor")
    ap.add_argument("--processes", type=int, default=1, metavar="K",
                    help="start each keda-interceptor row as K processes, each measured "
                         "--repeat times; the row's median is over all K x repeat runs. "
                         "Processes of the same code differ by up to 15%% in req/s (memory "
                         "layout, hash seed), so a ratio between two rows needs K >= 3")
    ap.add_argument("--routes", type=int, default=200, help="InterceptorRoutes loaded (200)")
    ap.add_argument("--server-cpu", type=int, default=0,
                    help="core of the server under test (0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="core of wrk (1)")
    ap.add_argument("--backend-cpu", type=int, default=None,
                    help="core of the backend nginx while a proxy is measured "
                         "(default: the load core)")
    ap.add_argument("--profile", metavar="FILE",
                    help="after the table, run keda-interceptor once more under py-spy "
                         "(raw/collapsed format to FILE) and print the hot spots")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="after the table, start one more keda-interceptor under twistd's "
                         "cProfile (--profiler=cprofile --savestats, stats to FILE), load it "
                         "for --duration s, and print calls per request and the hot spots")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if keda-interceptor misses the targets")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before measuring, wait up to S seconds for other processes to "
                         "use under 10%% of a core (0: do not wait)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing nginx/wrk")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.targets == ["all"]:
        args.targets = list(TARGETS)
    bad = set(args.targets) - set(TARGETS)
    if bad:
        ap.error(f"unknown target(s): {', '.join(sorted(bad))}")
    args.interceptor = args.interceptor or ["worktree"]
    args.reactor = args.reactor or [None]  # no -r: twistd's choice
    args.env = args.env or [""]
    if args.backend_cpu is None:
        args.backend_cpu = args.load_cpu
    bl.check_cores(ap, args, ("server_cpu", "load_cpu", "backend_cpu"))
    return args


# -- wrk ---------------------------------------------------------------------------


def run_wrk(tools, url, conns, duration, cpu, script, meter=None):
    """One wrk run; returns the parsed WRKJSON dict plus 'rps' and 'wrk_cpu'."""
    argv = ["taskset", "-c", str(cpu), tools["wrk"], "-t1", f"-c{conns}", f"-d{duration}s",
            "--latency", "--timeout", "2s", "-s", str(script),
            "-H", f"Host: {bl.BENCH_HOST}", url]
    rc, text, cpu_s = bl.run_client(argv, duration + 30, meter, "wrk")
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if rc != 0 or not m:
        raise RuntimeError(f"wrk failed ({rc}):\n{text}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["socket_errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"]
    r["errors"] = r["status"] + r["socket_errors"]
    r["wrk_cpu"] = 100.0 * cpu_s / (r["duration_us"] / 1e6)
    r["text"] = text
    return r


# -- the run -------------------------------------------------------------------------


class Bench:
    def __init__(self, args, td: bl.Teardown, tools):
        self.args = args
        self.td = td
        self.tools = tools
        self.script = td.dir / "report.lua"
        self.script.write_text(WRK_LUA)

    def start(self):
        a, td = self.args, self.td
        be_port, px_port = bl.free_ports(2)
        self.backend_port = be_port
        self.src = {}
        bl.log("starting nginx backend")
        self.backend = bl.start_nginx(td.procs, "nginx-backend", self.tools["nginx"],
                                      bl.nginx_backend_conf(td.dir / "backend", be_port),
                                      a.backend_cpu)
        self.backend_pids = [self.backend["master"], *self.backend["workers"]]
        self.urls = {"direct": f"http://127.0.0.1:{be_port}/"}
        self.server_pids = {"direct": self.backend_pids}
        if "nginx" in a.targets:
            bl.log("starting nginx reverse proxy")
            self.nginx = bl.start_nginx(td.procs, "nginx-proxy", self.tools["nginx"],
                                        bl.nginx_proxy_conf(td.dir / "proxy", px_port, be_port),
                                        a.server_cpu)
            self.urls["nginx"] = f"http://127.0.0.1:{px_port}/"
            self.server_pids["nginx"] = [self.nginx["master"], *self.nginx["workers"]]
        yard = str(Path(__file__).resolve().parent / "yardsticks.py")
        for t, extra in (("hello", []), ("rawproxy", [str(be_port)])):
            if t in a.targets:
                (port,) = bl.free_ports(1)
                bl.log(f"starting {LABELS[t]}")
                p = td.procs.start(t, ["taskset", "-c", str(a.server_cpu), sys.executable,
                                       yard, t, str(port), *extra], td.dir / f"{t}.log")
                self.urls[t] = f"http://127.0.0.1:{port}/"
                self.server_pids[t] = [p.pid]
                bl.wait_listening(port, p, td.dir / f"{t}.log")
        self.keda = {}
        #: row key -> the keys of its processes (the row's own key first)
        self.copies = {}
        self.sources = {}
        self.reactor_opts = {}
        self.extra_env = {}
        if "keda" in a.targets:
            srcs = {spec: bl.interceptor_source(spec, td.dir) for spec in a.interceptor}
            rows = [(spec, r, e) for spec in a.interceptor for r in a.reactor for e in a.env]
            for i, (spec, reactor, env) in enumerate(rows):
                key = "keda" if i == 0 else f"keda{i}"
                opts = self.reactor_opts[key] = ["-r", reactor] if reactor else []
                extra_env = self.extra_env[key] = dict(kv.split("=", 1)
                                                       for kv in env.split(",") if kv)
                tags = ([spec] if len(a.interceptor) > 1 else []) + (
                    [" ".join(opts) or "no -r"] if len(a.reactor) > 1 or reactor else []) + (
                    [env or "no env"] if len(a.env) > 1 else [])
                LABELS[key] = "keda-interceptor" + (f" [{', '.join(tags)}]" if tags else "")
                src = self.src[key] = srcs[spec]
                self.sources[key] = bl.describe_source(src, spec) + (
                    f", twistd -r {reactor}" if opts else ", twistd's default reactor")
                copies = self.copies[key] = [key] + [f"{key}.p{j}"
                                                     for j in range(2, a.processes + 1)]
                for copy in copies:
                    LABELS[copy] = LABELS[key]
                    bl.log(f"starting {LABELS[key]} with {a.routes} routes "
                           f"from {self.sources[key]}")
                    k = bl.start_interceptor(
                        td.procs, td.dir, be_port, a.server_cpu, routes=a.routes, src=src,
                        name=LABELS[key], twistd_opts=opts, extra_env=extra_env)
                    if copy == key:
                        self.keda[key] = k
                    self.urls[copy] = f"http://127.0.0.1:{k['proxy_port']}/"
                    self.server_pids[copy] = [k["pid"]]
        for url in self.urls.values():
            bl.check_body(url, bl.BENCH_HOST)
        self.all_ours = {p for pids in self.server_pids.values() for p in pids}

    def placement(self, target):
        """Pin the backend for this row (see the module docstring); return its core."""
        a = self.args
        core = a.server_cpu if target == "direct" else a.backend_cpu
        bl.pin(self.backend_pids, core)
        return core

    def measure(self, target, conns, duration, warmup):
        a = self.args
        backend_core = self.placement(target)
        url = self.urls[target]
        if warmup:
            run_wrk(self.tools, url, conns, warmup, a.load_cpu, self.script)
        groups = {"server": self.server_pids[target]}
        if target != "direct":
            groups["backend"] = self.backend_pids
        with bl.CpuMeter(groups, ours=self.all_ours) as meter:
            r = run_wrk(self.tools, url, conns, duration, a.load_cpu, self.script, meter)
        r.update(target=target, conns=conns, cpu=meter.pct, backend_core=backend_core)
        return r

    def pinning_lines(self):
        a = self.args
        lines = [
            f"core {a.load_cpu}: wrk -t1 (all rows)",
        ]
        if "nginx" in self.urls:
            lines.append(f"core {a.server_cpu}: nginx-proxy master + 1 worker")
        for t in ("hello", "rawproxy"):
            if t in self.urls:
                lines.append(f"core {a.server_cpu}: {LABELS[t]} (one process)")
        for key in self.keda:
            lines.append(f"core {a.server_cpu}: {LABELS[key]} (twistd, one process; idle "
                         "while other rows run)")
        lines.append(f"core {a.backend_cpu}: nginx backend master + 1 worker while a proxy "
                     f"row runs; moved to core {a.server_cpu} for the 'backend direct' rows")
        return lines


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def fmt_err(r):
    if not r["errors"]:
        return "0"
    return f"{r['errors']} ({r['status']} non-2xx, {r['socket_errors']} socket)"


def table(results, targets):
    """Markdown table; results is {(target, conns): r}."""
    head = ("| target | conns | req/s | p50 ms | p99 ms | errors | server CPU % "
            "| backend CPU % | wrk CPU % | other CPU % | vs nginx-proxy |")
    rows = [head, "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    conns_seen = []
    for (_, c) in results:
        if c not in conns_seen:
            conns_seen.append(c)
    for c in conns_seen:
        ref = results.get(("nginx", c))
        for t in targets:
            r = results.get((t, c))
            if r is None:
                continue
            ratio = f"{r['rps'] / ref['rps']:.2f}" if ref and t != "nginx" else (
                "1.00" if ref else "-")
            cpu = r["cpu"]
            backend = f"{cpu['backend']:.0f}" if "backend" in cpu else "-"
            rows.append(
                f"| {LABELS[t]} | {c} | {r['rps']:,.0f} | {fmt_ms(r['p50'])} | "
                f"{fmt_ms(r['p99'])} | {fmt_err(r)} | {cpu['server']:.0f} | {backend} | "
                f"{r['wrk_cpu']:.0f} | {cpu['other']:.0f} | {ratio} |")
    return "\n".join(rows)


def environment(tools):
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import twisted

    return [
        f"{os.cpu_count()} x {model}; Linux {platform.release()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Twisted {twisted.__version__}; {bl.first_line([tools['nginx'], '-v'])}; "
        f"{bl.first_line([tools['wrk'], '-v'])}",
    ]


def background_check(seconds=1.0):
    """CPU used by other processes while nothing of ours runs."""
    with bl.CpuMeter({}) as m:
        time.sleep(seconds)
    return m.pct["other"]


# -- profile ---------------------------------------------------------------------------


def profile(bench, out_path: Path, conns, duration):
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        bl.log("py-spy not in the venv: `.venv/bin/pip install py-spy`; skipping --profile")
        return None
    pid = bench.keda["keda"]["pid"]
    bench.placement("keda")
    argv = [str(pyspy), "record", "--pid", str(pid), "--duration", str(duration + 2),
            "--rate", "250", "--format", "raw", "--idle",
            "--output", str(out_path)]
    bl.log(f"profiling keda-interceptor: {' '.join(argv)}")
    spy = subprocess.Popen(["taskset", "-c", str(bench.args.load_cpu), *argv],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        time.sleep(1.0)
        r = run_wrk(bench.tools, bench.urls["keda"], conns, duration, bench.args.load_cpu,
                    bench.script)
        spy.communicate(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            bl._signal_group(spy.pid, 9)
            spy.wait()
    if not out_path.exists():
        bl.log("py-spy wrote nothing (needs ptrace: root or CAP_SYS_PTRACE)")
        return None
    return r, hot_spots(out_path)


def cprofile(bench, out_path: Path, conns, duration, top=25):
    """One more interceptor (the first keda row's code, reactor and environment)
    under cProfile."""
    a = bench.args
    k = bl.start_cprofiled(bench.td, bench.backend_port, a.server_cpu, out_path, a.routes,
                           src=bench.src.get("keda"),
                           twistd_opts=bench.reactor_opts.get("keda", []),
                           extra_env=bench.extra_env.get("keda"))
    bench.placement("keda")
    url = f"http://127.0.0.1:{k['proxy_port']}/"
    bl.check_body(url, bl.BENCH_HOST)
    r = run_wrk(bench.tools, url, conns, duration, a.load_cpu, bench.script)
    bl.report_cprofile(k, out_path, r["requests"], r["rps"], f"{conns} conns, {duration}s",
                       top, poll_time=True, own="own time (tottime)")


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _source_line(file: str, line: str) -> str:
    """The text of a sampled line (py-spy gives paths relative to sys.path)."""
    import linecache

    if not line:
        return ""
    for base in ["", *sys.path, str(bl.REPO)]:
        path = os.path.join(base, file)
        if os.path.exists(path):
            return linecache.getline(path, int(line)).strip()
    return ""


def hot_spots(path: Path):
    """Parse py-spy's raw (collapsed) output.

    Returns (total samples, samples waiting in the reactor's poll, self
    Counter, inclusive Counter), keyed by "function (file)"; a sample is
    "waiting" when its innermost Python line is a ``.poll(`` call (the
    epoll_wait of the reactor).
    """
    self_c, incl_c = Counter(), Counter()
    total = idle = 0
    poll_lines = {}
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, n = raw.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = [f for f in stack.split(";") if _FRAME.match(f)]
        if not frames:
            continue
        total += n
        leaf = _FRAME.match(frames[-1])
        key = (leaf.group("file"), leaf.group("line"))
        if key not in poll_lines:
            poll_lines[key] = ".poll(" in _source_line(*key)
        if poll_lines[key]:
            idle += n
            continue
        names = [_short(f) for f in frames]
        self_c[names[-1]] += n
        for f in set(names):
            incl_c[f] += n
    return total, idle, self_c, incl_c


def _short(frame: str) -> str:
    """"function (file)" without the line, so lines of one function add up."""
    m = _FRAME.match(frame)
    return f"{m.group('fn')} ({m.group('file')})"


def print_hot_spots(total, idle, self_c, incl_c, top=25):
    busy = max(1, total - idle)
    print(f"\npy-spy: {total} samples; {idle} ({100 * idle / max(1, total):.0f}%) on the "
          f"reactor's epoll.poll line, {busy} elsewhere; shares below are % of the latter. "
          "py-spy puts samples on the poll line even when the process never sleeps (see "
          "'server CPU %' above and docs/performance.md), so read the poll share with care")
    print(f"\nTop {top} by own time (self):")
    for f, n in self_c.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {f}")
    print(f"\nTop {top} by inclusive time (frames present in every busy sample left out):")
    shown = 0
    for f, n in incl_c.most_common():
        if n >= busy * 0.99:
            continue
        print(f"  {100 * n / busy:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break


# -- main --------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx", "wrk"], install=not args.no_install)
    conn_list = [args.connections] + ([] if args.no_single or args.connections == 1 else [1])
    with bl.Teardown("keda-bench-", keep=args.keep) as td:
        bench = Bench(args, td, tools)
        bench.start()
        keys = [t for t in TARGETS if t in args.targets and t != "keda"] + list(bench.keda)
        row_of = {copy: key for key, copies in bench.copies.items() for copy in copies}
        # the rows' processes take turns (row 1's first, row 2's first, ..., row 1's
        # second, ...), so that a slow stretch of the machine falls on every row alike
        measured = [k for k in keys if k not in bench.copies] + [
            copies[j] for j in range(args.processes) for copies in bench.copies.values()]
        idle_bg = background_check()
        deadline = time.monotonic() + args.wait_quiet
        while idle_bg > 10 and time.monotonic() < deadline:
            bl.log(f"other processes use {idle_bg:.0f}% of a core; waiting for quiet")
            time.sleep(4)
            idle_bg = background_check()
        wake = bl.wakeup_probe(args.server_cpu, args.load_cpu)
        runs = {}
        for rep in range(args.repeat):
            for conns in conn_list:
                for t in measured:
                    bl.log(f"run {rep + 1}/{args.repeat}: {LABELS[t]}"
                           + (f" (process {t.rpartition('.p')[2]})" if ".p" in t else "")
                           + f", {conns} conn(s), {args.duration}s")
                    r = bench.measure(t, conns, args.duration, args.warmup)
                    runs.setdefault((row_of.get(t, t), conns), []).append(r)
        results = {}
        spreads = []
        for key, rs in runs.items():
            if len(rs) > 1:
                spreads.append(f"{LABELS[key[0]]} at {key[1]} conn(s), req/s of each run in "
                               "order: " + ", ".join(f"{r['rps']:,.0f}" for r in rs))
            rs = sorted(rs, key=lambda r: r["rps"])
            results[key] = rs[len(rs) // 2]

        print()
        print("## keda-interceptor forwarding benchmark")
        print()
        print("- command: " + " ".join([Path(sys.executable).name,
                                        "benchmarks/bench_proxy.py", *sys.argv[1:]]))
        for line in environment(tools):
            print(f"- {line}")
        for key, where in bench.sources.items():
            print(f"- {LABELS[key]}: {where}")
        print(f"- wrk -t1 keep-alive GET, {args.duration}s per row after {args.warmup}s "
              f"warm-up; {args.repeat} run(s) per row"
              + (f" on each of {args.processes} processes" if args.processes > 1 else "")
              + (" (median by req/s)" if args.repeat * args.processes > 1 else "")
              + f"; {args.routes} InterceptorRoutes loaded")
        for line in bench.pinning_lines():
            print(f"- pinned: {line}")
        print(f"- other processes used {idle_bg:.0f}% of a core while the benchmark "
              "was idle" + ("  <-- NOISY MACHINE: figures are lower bounds"
                            if idle_bg > 10 else ""))
        if wake:
            print(f"- idle-core wake-up round trip core {args.server_cpu} <-> core "
                  f"{args.load_cpu}: p50 {wake[0]:.0f} us, p99 {wake[1]:.0f} us"
                  + ("  <-- SLOW WAKE-UPS: 1-connection rows are bound by the VM, "
                     "see docs/performance.md" if wake[0] > 500 else ""))
        print()
        print(table(results, keys))
        print()
        notes, failed = [], False
        for key in bench.keda:
            k = results.get((key, args.connections))
            if k is None:
                continue
            ok_rps = k["rps"] >= TARGET_RPS
            ok_p99 = k["p99"] / 1000 <= TARGET_P99_MS
            ok_err = k["errors"] == 0
            failed = failed or not (ok_rps and ok_p99 and ok_err)
            notes.append(f"{LABELS[key]} at {args.connections} conns: "
                         f"{k['rps']:,.0f} req/s (target >= {TARGET_RPS:,}: "
                         f"{'PASS' if ok_rps else 'FAIL'}), p99 {fmt_ms(k['p99'])} ms "
                         f"(target <= {TARGET_P99_MS:g}: {'PASS' if ok_p99 else 'FAIL'}), "
                         f"errors {k['errors']} ({'PASS' if ok_err else 'FAIL'})")
            if k["cpu"]["server"] > 0:
                notes.append(f"{LABELS[key]}: {k['rps'] / k['cpu']['server'] * 100:,.0f} "
                             f"req per CPU-second of its own at {args.connections} conns")
            one = results.get((key, 1))
            if one is not None and one["cpu"]["server"] < 90 and one["p50"] > 1000:
                notes.append(f"{LABELS[key]} at 1 conn: p50 {fmt_ms(one['p50'])} ms with "
                             f"only {one['cpu']['server']:.0f}% CPU: waiting, not computing "
                             "(see docs/performance.md, 'The 1-connection stall')")
        busy = [f"{LABELS[t]}/{c}" for (t, c), r in results.items() if r["cpu"]["other"] > 10]
        if busy:
            notes.append("other load above 10% of a core during: " + ", ".join(busy))
        stolen = [f"{LABELS[t]}/{c} ({r['cpu']['steal']:.0f}%)"
                  for (t, c), r in results.items() if r["cpu"]["steal"] > 2]
        if stolen:
            notes.append("the hypervisor stole CPU (steal time, % of one core) during: "
                         + ", ".join(stolen))
        for n in notes + spreads:
            print(f"- {n}")
        sys.stdout.flush()
        rc = 1 if args.check and failed else 0
        if args.cprofile and "keda" in bench.keda:
            out = Path(args.cprofile).resolve()
            cprofile(bench, out, args.connections, args.duration)
        if args.profile and "keda" in bench.keda:
            out = Path(args.profile).resolve()
            got = profile(bench, out, args.connections, args.duration)
            if got:
                r, spots = got
                print(f"\n## py-spy profile of {LABELS['keda']}, {args.connections} conns "
                      f"({r['rps']:,.0f} req/s while sampled at 250 Hz); "
                      f"raw stacks in {out}")
                print_hot_spots(*spots)
        return rc


if __name__ == "__main__":
    bl.run_main(main)
