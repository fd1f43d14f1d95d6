"""
Memory of the real interceptor with the Kubernetes source: VmRSS and VmHWM
idle and under keep-alive load, with 1,000 InterceptorRoutes.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--routes 1000]
[--connections 32] [--duration 10] [--run SPEC ...] [--breakdown]``

It starts, on loopback only and in a temp dir:

  - the suite's fake Kubernetes API server (``tests/fakeapi.py``, in its own
    process) holding ``--routes`` InterceptorRoutes, each with its Service
    (clusterIP 127.0.0.1) and a ready EndpointSlice, all leading to
  - an nginx backend (Debian package; see ``benchlib``);

then, once per ``--run``, ``twistd -n --pidfile= keda-interceptor
--kubeconfig FILE`` with the chart's arguments and environment (metrics on),
so the real ``kubernetes`` client lists and watches the five kinds, and
reads ``/proc/PID/status`` and ``/proc/PID/smaps_rollup``:

  - idle: ``/readyz`` answered 200 (every kind listed), ``--settle``
    seconds later, before any proxied request; VmHWM here is the peak of
    startup (imports plus the initial lists);
  - load: ``wrk -t1 -c CONNECTIONS`` keep-alive GETs for ``--duration``
    seconds, each to the next route's host in turn; the highest VmRSS
    sampled every 0.2 s, and VmHWM after it;
  - after: ``--settle`` seconds after the load.

A ``--run`` SPEC is ``[SOURCE][,manifests][,NAME=VALUE...]``: SOURCE is
``worktree`` (the default: this checkout), a git ref (exported with ``git
archive``) or a directory holding ``keda_proxy/``; ``manifests`` serves the
same objects from a YAML file (``--manifests``, no ``kubernetes`` package,
no watch threads) instead, for reference; each NAME=VALUE is added to that
run's environment.  So ``--run HEAD~1 --run worktree --run
worktree,MALLOC_ARENA_MAX=2`` compares the last commit but one, the checkout,
and the checkout with two malloc arenas, side by side.

``--breakdown`` adds, for the first run's source: what each step of the
imports costs in a fresh interpreter (VmRSS before and after); and one more
start of its interceptor under ``python -X tracemalloc=N`` (which costs
memory and time itself, so it is never one of the measured rows) that
prints, once it is ready and idle, where its Python allocations are (by the
package whose code made them; with ``--trace-frames`` 1, the default, code
objects of every module show up as one "import machinery" line; with 8 or
more they count for the module that imported them, but startup takes
minutes), its smaps_rollup, its largest mappings and its threads.

The interceptor is pinned to core 0; wrk, nginx and the fake API server to
core 1 (``--server-cpu``, ``--load-cpu``).  Everything started is stopped at
the end, also on Ctrl-C or an error.  Missing nginx/wrk are installed with
apt-get when run as root (``--no-install`` to refuse).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchlib as bl  # noqa: E402

#: The chart's (keda-add-ons-http v0.16) interceptor args and env, default
#: values; the ports are replaced by free ones.
CHART_ARGS = ["--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339"]
CHART_ENV = {
    "KEDA_HTTP_MAX_IDLE_CONNS": "1000",
    "KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST": "200",
    "KEDA_HTTP_DIRECT_POD_ROUTING": "true",
    "KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": "0",
    "KEDA_HTTP_TLS_SKIP_VERIFY": "false",
    # not the chart's 5s/30s: the load is over when we stop it
    "KEDA_HTTP_SHUTDOWN_DELAY": "0s",
    "KEDA_HTTP_DRAIN_TIMEOUT": "1s",
}

#: The chart's default interceptor memory limit.
LIMIT_MIB = 64

#: wrk: each request to the next route's host (r0 is bench.local), and a
#: one-line JSON summary at the end.
WRK_LUA = r"""
local n = {routes}
local i = 0
request = function()
  local host = "bench.local"
  if i > 0 then host = "r" .. i .. ".bench.local" end
  i = (i + 1) % n
  return wrk.format("GET", "/", {{["Host"] = host}})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\"requests\": %.0f, \"duration_us\": %.0f, \"errors\": %.0f, " ..
    "\"p99\": %.0f}}\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(99)))
end
"""

#: The --breakdown boot: twistd in this interpreter under tracemalloc; on
#: SIGUSR2 it writes a snapshot to argv[1] (on the reactor thread, between
#: events, as Python runs signal handlers on the main thread).
_TRACED_BOOT = r"""
import os, signal, sys, tracemalloc
out = sys.argv[1]
def dump(signum, frame):
    snap = tracemalloc.take_snapshot()
    snap.dump(out + ".tmp")
    os.rename(out + ".tmp", out)
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["twistd"] + sys.argv[2:]
from twisted.scripts.twistd import run
run()
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000,
                    help="InterceptorRoutes, each with a Service and an EndpointSlice (1000)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of load (10)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between ready (or the load's end) and a reading (3)")
    ap.add_argument("--run", action="append", default=[], metavar="SPEC",
                    help="[SOURCE][,NAME=VALUE...]: one measured interceptor (repeatable; "
                    "default: worktree)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each run N times, interleaved; every reading is shown")
    ap.add_argument("--breakdown", action="store_true",
                    help="also: tracemalloc by package, smaps_rollup and threads of the first run")
    ap.add_argument("--top", type=int, default=25, help="packages in the breakdown (25)")
    ap.add_argument("--trace-frames", type=int, default=1,
                    help="tracemalloc frames per allocation in the breakdown (1)")
    ap.add_argument("--server-cpu", type=int, default=0, help="core of the interceptor (0)")
    ap.add_argument("--load-cpu", type=int, default=1,
                    help="core of wrk, nginx and the fake API server (1)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing nginx/wrk")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--json", metavar="FILE", help="also write the readings as JSON")
    args = ap.parse_args(argv)
    args.run = args.run or ["worktree"]
    ncpu = os.cpu_count() or 1
    for name in ("server_cpu", "load_cpu"):
        if getattr(args, name) >= ncpu:
            ap.error(f"--{name.replace('_', '-')}: only {ncpu} cores")
    return args


def parse_run(spec: str):
    """``[SOURCE][,manifests][,NAME=VALUE...]`` -> (source, manifests?, {NAME: VALUE})."""
    source, manifests, env = "worktree", False, {}
    for i, part in enumerate(spec.split(",")):
        name, sep, value = part.partition("=")
        if sep and name:
            env[name] = value
        elif part == "manifests":
            manifests = True
        elif i == 0 and not sep:
            source = part or "worktree"
        else:
            raise SystemExit(f"--run {spec!r}: {part!r} is not NAME=VALUE or manifests")
    return source, manifests, env


# -- /proc -----------------------------------------------------------------------------


def status(pid: int) -> dict:
    """kB fields and Threads of /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize",
                       "VmData", "VmStk", "Threads"):
                out[key] = int(value.split()[0])
    return out


def smaps_rollup(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                m = re.match(r"^(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out


def threads(pid: int) -> list:
    names = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def big_mappings(pid: int, top: int = 12) -> list:
    """The mappings holding the most Rss: (kB Rss, kB size, name)."""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split(None, 5)
                cur = {"name": fields[5].strip() if len(fields) > 5 else "[anon]"}
                maps.append(cur)
            elif cur is not None and line.startswith(("Rss:", "Size:")):
                cur[line.split(":")[0]] = int(line.split()[1])
    merged: dict = {}
    for m in maps:
        name = m["name"]
        if name.startswith("/"):
            name = os.path.basename(name)
        r, s = merged.get(name, (0, 0))
        merged[name] = (r + m.get("Rss", 0), s + m.get("Size", 0))
    return sorted(((r, s, n) for n, (r, s) in merged.items()), reverse=True)[:top]


def mib(kb) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


# -- the pieces --------------------------------------------------------------------------


class Interceptor:
    """One twistd keda-interceptor on the Kubernetes source."""

    def __init__(self, td: bl.Teardown, name: str, src, extra_env: dict, state: list,
                 cpu: int, traced_to: Path | None = None, frames: int = 1):
        self.name = name
        self.proxy_port, self.admin_port, metrics_port = bl.free_ports(3)
        env = bl.interceptor_env(self.proxy_port, self.admin_port, src)
        env.pop("OTEL_PROM_EXPORTER_ENABLED", None)  # the chart leaves metrics on
        env.update(CHART_ENV, OTEL_PROM_EXPORTER_PORT=str(metrics_port))
        env.pop("KUBECONFIG", None)
        env.update(extra_env)
        twistd_args = ["-n", "--pidfile=", "keda-interceptor", *CHART_ARGS,
                       *state]
        if traced_to is None:
            argv = ["taskset", "-c", str(cpu), bl.twistd_path(), *twistd_args]
        else:
            argv = ["taskset", "-c", str(cpu), sys.executable, "-X", f"tracemalloc={frames}",
                    "-c", _TRACED_BOOT, str(traced_to), *twistd_args]
        where = str(src or ROOT)
        bl.check_import_source(env, where)
        self.log = td.dir / ("".join(c if c.isalnum() else "_" for c in name) + ".log")
        self.proc = td.procs.start(name, argv, self.log, env=env, cwd=where)
        self.pid = self.proc.pid
        t0 = time.monotonic()
        bl.wait_ready(self.proc, name, self.log, self.admin_port,
                      120 if traced_to is None else 900)
        self.ready_s = time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            bl._signal_group(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                bl._signal_group(self.pid, signal.SIGKILL)
                self.proc.wait(5)


def run_wrk(tools, url: str, conns: int, duration: int, cpu: int, script: Path,
            pid: int) -> dict:
    """wrk against C{url}, sampling C{pid}'s VmRSS every 0.2 s meanwhile."""
    argv = ["taskset", "-c", str(cpu), tools["wrk"], "-t1", f"-c{conns}", f"-d{duration}s",
            "--timeout", "2s", "-s", str(script), url]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    peak = 0
    try:
        while p.poll() is None:
            peak = max(peak, status(pid)["VmRSS"])
            time.sleep(0.2)
        out = p.stdout.read().decode(errors="replace")
    except BaseException:
        bl._signal_group(p.pid, signal.SIGKILL)
        p.wait()
        raise
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{out}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["peak_rss"] = peak
    return r


def measure(td, tools, args, spec: str, states: dict, script: Path, n: int) -> dict:
    source, manifests, env = parse_run(spec)
    src = bl.interceptor_source(source, td.dir / f"src{n}")
    bl.log(f"run {spec!r}: starting the interceptor from {bl.describe_source(src, source)}")
    k = Interceptor(td, f"keda-{n}", src, env, states[manifests], args.server_cpu)
    try:
        time.sleep(args.settle)
        idle = status(k.pid)
        idle_smaps = smaps_rollup(k.pid)
        idle_threads = threads(k.pid)
        bl.check_body(f"http://127.0.0.1:{k.proxy_port}/", bl.BENCH_HOST)
        bl.log(f"run {spec!r}: idle VmRSS {mib(idle['VmRSS'])} MiB; "
               f"{args.duration} s of load at {args.connections} connections")
        load = run_wrk(tools, f"http://127.0.0.1:{k.proxy_port}/", args.connections,
                       args.duration, args.load_cpu, script, k.pid)
        loaded = status(k.pid)
        loaded["fds"] = bl.count_fds(k.pid)
        time.sleep(args.settle)
        after = status(k.pid)
    finally:
        k.stop()
    return {"spec": spec, "source": bl.describe_source(src, source), "env": env,
            "ready_s": k.ready_s, "idle": idle, "idle_smaps": idle_smaps,
            "threads": idle_threads, "load": load, "loaded": loaded, "after": after}


def breakdown(td, args, states: dict, top: int) -> None:
    import tracemalloc

    source, manifests, env = parse_run(args.run[0])
    src = bl.interceptor_source(source, td.dir / "src-traced")
    snap_path = td.dir / "startup.snapshot"
    bl.log("breakdown: starting the interceptor under tracemalloc")
    print_imports(src, env, args.run[0])
    k = Interceptor(td, "keda-traced", src, env, states[manifests], args.server_cpu,
                    traced_to=snap_path, frames=args.trace_frames)
    try:
        time.sleep(args.settle)
        st, rollup, names = status(k.pid), smaps_rollup(k.pid), threads(k.pid)
        maps = big_mappings(k.pid)
        os.kill(k.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not snap_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("no tracemalloc snapshot")
            time.sleep(0.1)
    finally:
        k.stop()
    snap = tracemalloc.Snapshot.load(str(snap_path))
    by_pkg: dict = {}
    total = 0
    for trace in snap.traces:
        pkg = _package(trace.traceback)
        size, count = by_pkg.get(pkg, (0, 0))
        by_pkg[pkg] = (size + trace.size, count + 1)
        total += trace.size
    print(f"\nWhere the memory is, idle after startup ({args.routes:,} routes; "
          f"run {args.run[0]!r} under -X tracemalloc={args.trace_frames}, which adds its "
          "own)\n")
    print(f"VmRSS {mib(st['VmRSS'])} MiB (RssAnon {mib(st['RssAnon'])}, RssFile "
          f"{mib(st['RssFile'])}), VmHWM {mib(st['VmHWM'])}, threads {st['Threads']}: "
          f"{', '.join(names)}")
    print("smaps_rollup: " + ", ".join(f"{k} {mib(v)}" for k, v in rollup.items()
                                       if k in ("Rss", "Pss", "Pss_Anon", "Pss_File",
                                                "Anonymous", "Private_Dirty",
                                                "Shared_Clean", "Private_Clean")) + " (MiB)")
    print("\nLargest mappings by Rss (MiB): " + "; ".join(
        f"{n} {mib(r)} of {mib(s)}" for r, s, n in maps))
    print(f"\nPython allocations traced: {total / 2**20:.1f} MiB in {len(snap.traces):,} "
          "blocks, by package (the code that allocated; a module's code objects count "
          "for its importer)\n")
    print(f"| {'package':<40} | MiB | blocks |")
    print(f"|{'-' * 42}|----:|-------:|")
    for pkg, (size, count) in sorted(by_pkg.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| {pkg:<40} | {size / 2**20:.1f} | {count:,} |")


#: The steps of the imports, in the order in which a start makes them.
_IMPORT_STEPS = (
    ("python, twisted.internet.epollreactor installed",
     "from twisted.internet import epollreactor; epollreactor.install()"),
    ("twistd and the keda-interceptor plugin (keda_proxy.tap)",
     "import twisted.scripts.twistd, twisted.application.app, keda_proxy.tap"),
    ("keda_proxy._app (proxy, admin, metrics, store)", "import keda_proxy._app"),
    ("the kubernetes package (client, config, watch...)", "import kubernetes"),
    ("keda_proxy.state._kube_source (the API classes it uses)",
     "import keda_proxy.state._kube_source"),
)

_IMPORTS_PROBE = r"""
import json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
steps = json.loads(sys.argv[1])
out = []
before, mods = rss(), len(sys.modules)
for label, code in steps:
    exec(code)
    now = rss()
    out.append((label, now - before, len(sys.modules) - mods, now))
    before, mods = now, len(sys.modules)
print(json.dumps(out))
"""


def print_imports(src, env: dict, spec: str) -> None:
    """What each import step costs in a fresh interpreter, from C{src}."""
    run_env = dict(os.environ, **env)
    if src is not None:
        run_env["PYTHONPATH"] = str(src)
    p = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, json.dumps(_IMPORT_STEPS)],
                       env=run_env, cwd=str(src or ROOT), capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        print(f"imports probe failed:\n{p.stderr[-2000:]}")
        return
    base = json.loads(p.stdout)[0][3] - json.loads(p.stdout)[0][1]
    print(f"\nImports of run {spec!r}, step by step in a fresh interpreter (VmRSS MiB; "
          f"the bare interpreter: {mib(base)})\n")
    print(f"| {'step':<58} | + MiB | + modules | VmRSS |")
    print(f"|{'-' * 60}|------:|----------:|------:|")
    for label, delta, mods, now in json.loads(p.stdout):
        print(f"| {label:<58} | {mib(delta)} | {mods} | {mib(now)} |")



_SITE = re.compile(r"/(?:site|dist)-packages/([^/]+)(?:/([^/]+))?")
_STDLIB = re.compile(r"/lib/python3\.\d+/([^/]+)")


def _package(traceback) -> str:
    """The package of the innermost frame outside the import machinery."""
    for frame in reversed(traceback):  # innermost first
        f = frame.filename
        if f.startswith("<frozen importlib"):
            continue
        m = _SITE.search(f)
        if m:
            name = m.group(1).removesuffix(".py")
            if name == "kubernetes" and m.group(2):
                return f"kubernetes.{m.group(2).removesuffix('.py')}"
            return name
        if "/keda_proxy/" in f:
            return "keda_proxy." + f.rsplit("/keda_proxy/", 1)[1].removesuffix(".py")
        m = _STDLIB.search(f)
        if m:
            return "stdlib: " + m.group(1).removesuffix(".py")
        return f
    return "<import machinery>"


# -- the table -----------------------------------------------------------------------------


def table(results: list, args) -> None:
    print(f"\nkeda-interceptor memory, Kubernetes source: {args.routes:,} InterceptorRoutes "
          f"+ {args.routes:,} Services + {args.routes:,} EndpointSlices (python "
          f"{sys.version.split()[0]}); load: wrk -c{args.connections} keep-alive, "
          f"{args.duration} s, each request to the next route. MiB.\n")
    print("| run | ready s | idle VmRSS | startup VmHWM | idle anon / file | threads "
          "| load max VmRSS | VmHWM after load | fds after load | VmRSS after | req/s | errors |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        i, ld = r["idle"], r["load"]
        print(f"| {r['spec']} | {r['ready_s']:.1f} | {mib(i['VmRSS'])} | {mib(i['VmHWM'])} | "
              f"{mib(i['RssAnon'])} / {mib(i['RssFile'])} | {i['Threads']} | "
              f"{mib(ld['peak_rss'])} | {mib(r['loaded']['VmHWM'])} | {r['loaded']['fds']} | "
              f"{mib(r['after']['VmRSS'])} | {ld['rps']:.0f} | {ld['errors']:.0f} |")
    print()
    for spec, r in {r["spec"]: r for r in results}.items():
        print(f"{spec}: {r['source']}" + (f", env {r['env']}" if r["env"] else ""))
    print(f"\nthe chart's default limit: {LIMIT_MIB} MiB")


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx", "wrk"], install=not args.no_install)
    results = []
    with bl.Teardown("bench-memory-", keep=args.keep) as td:
        (be_port,) = bl.free_ports(1)
        bl.log("starting nginx backend")
        bl.start_nginx(td.procs, "nginx-backend", tools["nginx"],
                       bl.nginx_backend_conf(td.dir / "backend", be_port), args.load_cpu)
        bl.log(f"starting the fake API server with {args.routes} routes")
        states = {False: ["--kubeconfig",
                          bl.start_fake_api(td, be_port, args.routes, args.load_cpu)],
                  True: ["--manifests",
                         str(bl.write_manifests(td.dir / "manifests", be_port, args.routes))]}
        script = td.dir / "routes.lua"
        script.write_text(WRK_LUA.format(routes=args.routes))
        n = 0
        for _ in range(args.repeat):
            for spec in args.run:
                results.append(measure(td, tools, args, spec, states, script, n))
                n += 1
        table(results, args)
        if args.breakdown:
            breakdown(td, args, states, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    bl.run_main(main)
