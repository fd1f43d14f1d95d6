"""
The interceptor's memory, as the chart runs it, for sizing its resources
(deploy/values.yaml, docs/deploy.md).

Run: ``.venv/bin/python deploy/measure_rss.py [--routes 1000] [--connections 32] [--duration 10]``

It builds the image's venv as the Dockerfile does (``deploy/image.sh``, in a
temp dir; or ``--venv DIR`` to reuse one) and starts
``twistd -n --pidfile= keda-interceptor`` from it with the chart's args and
env (tests/test_image_install.py: CHART_ARGS, CHART_ENV; free ports instead
of 8080/9090/2223), once per ``--sources``:

  - kube: ``--kubeconfig`` to the fake API server of the suite
    (tests/fakeapi.py, in its own process), holding ``--routes``
    InterceptorRoutes, each with its Service and a ready EndpointSlice, all
    leading to one nginx backend: what a pod runs (the real ``kubernetes``
    client, list and watch of the five kinds);
  - manifests: ``--manifests`` with the same objects in a YAML file.

For each, VmRSS and VmHWM from /proc/PID/status:

  - idle: ready, 5 s later, before any request;
  - under load: ``wrk -c CONNECTIONS`` keep-alive GETs for DURATION seconds,
    each request to the next of the routes' hosts in turn; the highest
    VmRSS of samples taken every 0.2 s, and VmHWM (the kernel's peak)
    after it;
  - after: 5 s after the load;

then it is stopped as the kubelet does (SIGTERM; the chart's 5 s shutdown
delay applies).

The interceptor is pinned to core 0, wrk and nginx to core 1.  Everything
runs on loopback, and is stopped at the end (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchlib as bl  # noqa: E402

from tests.test_image_install import (  # noqa: E402
    CHART_ARGS,
    CHART_ENV,
    IMAGE_VENV,
    copy_build_context,
    final_stage,
    image_sh,
)

#: wrk: each request to the next route's host, r0 being bench.local
WRK_LUA = """\
local n = {routes}
local i = 0
request = function()
  local host = "bench.local"
  if i > 0 then host = "r" .. i .. ".bench.local" end
  i = (i + 1) % n
  return wrk.format("GET", "/", {{["Host"] = host}})
end
"""


def build_venv(top: Path) -> Path:
    context, wheels, venv = top / "context", top / "wheels", top / "venv"
    bl.log("building the image's venv (deploy/image.sh wheels, install, finish)")
    copy_build_context(context)
    image_sh("wheels", str(context), str(wheels))
    image_sh("install", str(wheels), str(venv))
    image_sh("finish", str(venv))
    return venv


def measure(td: bl.Teardown, venv: Path, source: list, args, tools) -> dict:
    """Start the interceptor on C{source} (its extra arguments), idle, load,
    rest; returns the VmRSS/VmHWM readings (kB) and wrk's summary."""
    proxy_port, admin_port, metrics_port = bl.free_ports(3)
    image = final_stage()
    env = {k: v.replace(IMAGE_VENV, str(venv)).replace("$PATH", "/usr/bin:/bin")
           for k, v in image["env"].items()}
    env.update(CHART_ENV, HOME="/nonexistent",
               KEDA_HTTP_PROXY_PORT=str(proxy_port),
               KEDA_HTTP_ADMIN_PORT=str(admin_port),
               OTEL_PROM_EXPORTER_PORT=str(metrics_port))
    argv = (["taskset", "-c", "0"]
            + [a.replace(IMAGE_VENV, str(venv)) for a in image["entrypoint"]]
            + CHART_ARGS + source)
    log_path = td.dir / f"interceptor-{len(td.procs.procs)}.log"
    p = td.procs.start("keda-interceptor", argv, log_path, env=env, cwd="/")
    started = time.monotonic()
    bl.wait_ready(p, "keda-interceptor", log_path, admin_port, 120)
    out = {"ready_s": time.monotonic() - started}
    time.sleep(5)
    out["idle"] = bl.rss_kb(p.pid)

    bl.check_body(f"http://127.0.0.1:{proxy_port}/", bl.BENCH_HOST)
    script = td.dir / "rotate.lua"
    script.write_text(WRK_LUA.format(routes=args.routes))
    wrk = subprocess.Popen(
        ["taskset", "-c", "1", tools["wrk"], "-t1", f"-c{args.connections}",
         f"-d{args.duration}s", "--timeout", "2s", "-s", str(script),
         f"http://127.0.0.1:{proxy_port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    peak, ticks = 0, bl.proc_ticks(p.pid)
    while wrk.poll() is None:
        peak = max(peak, bl.rss_kb(p.pid)["VmRSS"])
        time.sleep(0.2)
    text = wrk.stdout.read().decode(errors="replace")
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{text}")
    out["load"] = dict(bl.rss_kb(p.pid), sampled=peak)
    out["cpu"] = (bl.proc_ticks(p.pid) - ticks) / bl.CLK_TCK / args.duration
    time.sleep(5)
    out["after"] = bl.rss_kb(p.pid)
    out["wrk"] = {
        "requests": next((ln.split()[0] for ln in text.splitlines() if "requests in" in ln), "?"),
        "rps": next((ln.split()[1] for ln in text.splitlines()
                     if ln.startswith("Requests/sec")), "?"),
        "non2xx": next((ln.split(":")[1].strip() for ln in text.splitlines()
                        if "Non-2xx" in ln or "Socket errors" in ln), "none"),
    }
    # as the kubelet stops it: SIGTERM, then the chart's grace period
    p.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    out["exit"] = p.wait(timeout=45)
    out["stop_s"] = time.monotonic() - t0
    return out


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--sources", default="kube,manifests",
                    help="kube (the fake API server), manifests, or both (default)")
    ap.add_argument("--venv", type=Path, help="an image venv already built (deploy/image.sh)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    tools = bl.ensure_tools(["nginx", "wrk"])

    results = {}
    with bl.Teardown("keda-rss-", keep=args.keep) as td:
        venv = args.venv.resolve() if args.venv else build_venv(td.dir)
        (backend_port,) = bl.free_ports(1)
        nginx = bl.start_nginx(td.procs, "nginx", tools["nginx"],
                               bl.nginx_backend_conf(td.dir / "nginx", backend_port), 1)
        bl.log(f"nginx backend on {backend_port} (pid {nginx['master']})")
        for name in args.sources.split(","):
            if name == "kube":
                source = ["--kubeconfig", bl.start_fake_api(td, backend_port, args.routes)]
            elif name == "manifests":
                source = ["--manifests",
                          str(bl.write_manifests(td.dir / "manifests", backend_port,
                                                 args.routes))]
            else:
                ap.error(f"unknown source {name!r}")
            bl.log(f"measuring with {name}")
            results[name] = measure(td, venv, source, args, tools)

    print(f"keda-interceptor from the image's venv, {args.routes} InterceptorRoutes, "
          f"the chart's (v0.16) args and env; {args.connections} keep-alive connections "
          f"for {args.duration} s; {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print()
    print("| source | ready s | idle VmRSS MiB | load VmRSS MiB (highest sample) "
          "| VmHWM MiB after load | VmRSS MiB 5 s later | wrk requests | req/s "
          "| errors | CPU under load, cores | SIGTERM to exit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    labels = {"kube": "Kubernetes API (fake server)", "manifests": "--manifests"}
    for name, r in results.items():
        print(f"| {labels[name]} | {r['ready_s']:.1f} | {mib(r['idle']['VmRSS'])} "
              f"| {mib(r['load']['sampled'])} | {mib(r['load']['VmHWM'])} "
              f"| {mib(r['after']['VmRSS'])} | {r['wrk']['requests']} | {r['wrk']['rps']} "
              f"| {r['wrk']['non2xx']} | {r['cpu']:.2f} | {r['stop_s']:.1f} (exit {r['exit']}) |")
    return 0


if __name__ == "__main__":
    bl.run_main(main)
