"""
keda-interceptor's memory under big HTTP/2 transfers: each one must grow its
RSS by at most 50 MB (docs/http2.md, "Flow control and memory").

Run: ``.venv/bin/python benchmarks/bench_h2_memory.py [--rate 64M] [--repeat 2]``
(``--quick``: a 64 MiB download over each upstream kind and one gRPC call,
in under 10 s; ``--rate 0``: downloads without a rate limit).

It starts, on loopback only and in a temp dir removed on exit:

  - an nginx backend (Debian package) serving a sparse file (``truncate``)
    of ``--size-mb`` MiB (1024) from a plain HTTP/1.1 port and from an h2c
    (``listen ... http2``, prior knowledge) port;
  - a grpcio server (this file, ``serve-grpc PORT LIMIT``: a generic
    handler on raw bytes, one unary method answering its request reversed;
    send and receive limits raised to 16 MiB on it and on the client);
  - for each scenario run, a fresh keda-interceptor (``twistd -n
    keda-interceptor --manifests DIR``, its defaults) with three routes:
    ``bench.local`` to the nginx HTTP/1.1 port, ``h2c.bench.local`` and
    ``grpc.bench.local`` to Services whose port says ``appProtocol:
    kubernetes.io/h2c`` (the nginx h2c port, the gRPC server);

and runs, each scenario ``--repeat`` times:

  1. ``download-h1``: ``curl -sS --http2-prior-knowledge --limit-rate RATE
     -o /dev/null -w '%{size_download} %{http_version} %{http_code}' -H
     'Host: bench.local' http://127.0.0.1:PORT/big.bin``: the whole file
     through the interceptor (client leg HTTP/2, upstream leg HTTP/1.1), by
     a client reading slower than the backend can send (and than the proxy
     can forward: ~220 MiB/s unthrottled), so the proxy must hold the
     upstream back;
  2. ``download-h2c``: the same through ``h2c.bench.local``: the upstream
     leg is HTTP/2 too, and the proxy's stream windows hold nginx back;
  3. ``grpc-seq``: ``--grpc-calls`` (5) unary calls in a row, each sending
     an 8 MiB message and receiving it back reversed (grpcio client on one
     channel, ``grpc.default_authority`` = the route's host);
  4. ``grpc-conc``: ``--grpc-concurrent`` (4) such calls at once on one
     channel (so on one HTTP/2 connection).

Each download must arrive whole (curl's ``size_download`` = the file's
size, ``http_version`` 2, status 200); each gRPC call must end OK with its
payload reversed, byte for byte.

Memory: before each scenario, one small warm-up request over the same
route (a 4 KiB file; a 1 KiB gRPC call), a 0.5 s pause, then the
interceptor's VmRSS ("before") and its VmHWM reset (``clear_refs``).
VmRSS is then read from ``/proc/PID/status`` every ``--interval`` s
(0.1) while the client runs; "peak" is the highest of those samples and
of VmHWM at the end (the kernel's own peak, which catches a spike between
samples); "growth" is peak - before, against the 50 MB bound.  MB here is
MiB (kB / 1024), as in the other benchmarks.  A per-second RSS timeline
of every run follows the table; on a failure, the interceptor's log tail
as well.

Pinning (2 cores): keda-interceptor alone on ``--server-cpu`` (0); nginx,
the gRPC server and the clients on ``--load-cpu`` (1).  Exit status 1 if
any run failed or went over the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

HERE = Path(__file__).resolve().parent
H2C_HOST = "h2c.bench.local"
GRPC_HOST = "grpc.bench.local"
#: growth of the interceptor's RSS allowed per scenario, MB (MiB)
BOUND_MB = 50
GRPC_SERVICE = "bench.Big"
GRPC_METHOD = f"/{GRPC_SERVICE}/Reverse"
#: gRPC message limit on both ends, each way (8 MiB and room; more if
#: --grpc-mb asks for more)
MAX_MESSAGE = 16 * 1024 * 1024


def message_options(limit: int = MAX_MESSAGE) -> list:
    return [("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit)]
SMALL_FILE = "small.bin"
SMALL_SIZE = 4096
BIG_FILE = "big.bin"


# -- the gRPC peers (subcommands of this file) ----------------------------------------------


def serve_grpc(port: int, limit: int) -> int:
    """A grpcio server on 127.0.0.1:PORT whose one method answers its
    request reversed; stops when its stdin closes (or on SIGTERM)."""
    from concurrent import futures

    import grpc

    def reverse(request: bytes, context) -> bytes:
        return request[::-1]

    handler = grpc.method_handlers_generic_handler(
        GRPC_SERVICE, {"Reverse": grpc.unary_unary_rpc_method_handler(reverse)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler],
                         options=[*message_options(limit), ("grpc.so_reuseport", 0)])
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        sys.exit(f"could not listen on 127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    sys.stdin.buffer.read()
    server.stop(None).wait(5)
    return 0


def grpc_calls(target: str, authority: str, calls: int, concurrent: int, size: int,
               limit: int) -> int:
    """C{calls} unary calls of C{size} bytes each over one channel,
    C{concurrent} at a time; prints one JSON line: calls OK, errors,
    seconds.  Each payload is random and different; the answer must be it
    reversed."""
    import grpc

    base = os.urandom(size)
    out = {"ok": 0, "errors": [], "seconds": 0.0, "size": size}
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority),
                                                *message_options(limit)]) as ch:
        call = ch.unary_unary(GRPC_METHOD)
        t0 = time.monotonic()
        i = 0
        while i < calls:
            batch = []
            for _ in range(min(concurrent, calls - i)):
                payload = i.to_bytes(4, "big") + base[4:]
                batch.append((i, payload, call.future(payload, timeout=120)))
                i += 1
            for n, payload, fut in batch:
                try:
                    got = fut.result()
                except grpc.RpcError as e:
                    out["errors"].append(f"call {n}: {e.code()} {e.details()!r}")
                    continue
                if got != payload[::-1]:
                    out["errors"].append(f"call {n}: {len(got)} bytes back, not the "
                                         f"{len(payload)} sent reversed")
                else:
                    out["ok"] += 1
        out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] == calls else 1


# -- configuration ----------------------------------------------------------------------------


def backend_conf(dir: Path, docroot: Path, h1_port: int, h2_port: int) -> Path:
    location = f"""\
        location / {{
            root {docroot};
        }}"""
    body = f"""\
    server {{
        listen 127.0.0.1:{h1_port};
{location}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2;
{location}
    }}"""
    return bl.write_nginx(dir, body)


def h2c_route(name: str, host: str, port: int) -> str:
    """A Service (port C{h2c}, appProtocol h2c), its ready EndpointSlice and
    an InterceptorRoute for C{host}, namespace bench."""
    return bl.route_manifest(name, host, port, port_name="h2c", app_protocol=bl.H2C)


# -- RSS sampling ---------------------------------------------------------------------------


def vm_rss(pid: int) -> int:
    return bl.rss_kb(pid)["VmRSS"]


def reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """VmRSS of C{pid} every C{interval} s until stopped: (t, kB) pairs."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while True:
            try:
                self.samples.append((time.monotonic() - self.t0, vm_rss(self.pid)))
            except (OSError, KeyError):
                return
            if self._halt.wait(self.interval):
                break

    def stop(self):
        self._halt.set()
        self.join()
        try:
            self.samples.append((time.monotonic() - self.t0, vm_rss(self.pid)))
        except (OSError, KeyError):
            pass


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


# -- the run ------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024,
                    help="size of the download, MiB (1024)")
    ap.add_argument("--rate", default="64M",
                    help="curl --limit-rate for the downloads (64M: 64 MiB/s, ~16 s for 1 GiB; "
                         "0: no limit)")
    ap.add_argument("--grpc-mb", type=int, default=8,
                    help="gRPC message size each way, MiB (8)")
    ap.add_argument("--grpc-calls", type=int, default=5,
                    help="calls in a row in grpc-seq (5)")
    ap.add_argument("--grpc-concurrent", type=int, default=4,
                    help="calls at once in grpc-conc (4; 0: leave the scenario out)")
    ap.add_argument("--scenarios", default="download-h1,download-h2c,grpc-seq,grpc-conc",
                    help="comma-separated: download-h1, download-h2c, grpc-seq, grpc-conc")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each scenario (1)")
    ap.add_argument("--interval", type=float, default=0.1,
                    help="seconds between RSS samples (0.1)")
    ap.add_argument("--server-cpu", type=int, default=0,
                    help="core of keda-interceptor (0)")
    ap.add_argument("--load-cpu", type=int, default=1,
                    help="core of nginx, the gRPC server and the clients (1)")
    ap.add_argument("--interceptor", metavar="SRC",
                    help="code to run keda-interceptor from: 'worktree' (default), a git ref "
                         "of this checkout, or a directory holding keda_proxy/")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="environment for keda-interceptor (repeatable)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a 64 MiB download each way, one gRPC call, no grpc-conc")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install a missing nginx")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_mb, args.grpc_calls, args.repeat = 64, 1, 1
        args.scenarios = ",".join(s for s in args.scenarios.split(",") if s != "grpc-conc")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.grpc_concurrent:
        args.scenarios = [s for s in args.scenarios if s != "grpc-conc"]
    bad = set(args.scenarios) - {"download-h1", "download-h2c", "grpc-seq", "grpc-conc"}
    if bad:
        ap.error(f"unknown scenario(s): {', '.join(sorted(bad))}")
    bl.check_cores(ap, args)
    return args


def rate_bytes(rate: str) -> float:
    """curl's --limit-rate units (k, M, G: powers of 1024)."""
    mult = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(rate[-1:].lower(), 1)
    return float(rate.rstrip("kKmMgG")) * mult or float("inf")


class Bench:
    def __init__(self, args, td: bl.Teardown, tools):
        self.args, self.td, self.tools = args, td, tools
        self.size = args.size_mb * 1024 * 1024
        self.grpc_limit = max(MAX_MESSAGE, (args.grpc_mb + 1) * 1024 * 1024)
        self.runs = []  # one dict per scenario run
        self.curl = bl._which("curl")
        if self.curl is None:
            sys.exit("missing curl: apt-get install -y curl")

    def start(self):
        a, td = self.args, self.td
        docroot = td.dir / "www"
        docroot.mkdir()
        # nginx's workers run as another user when started by root: let them
        # through the (0700) temp dir to the files
        os.chmod(td.dir, 0o711)
        os.chmod(docroot, 0o755)
        subprocess.run(["truncate", "-s", str(self.size), str(docroot / BIG_FILE)], check=True)
        (docroot / SMALL_FILE).write_bytes(b"x" * SMALL_SIZE)
        h1_port, h2_port, grpc_port = bl.free_ports(3)
        self.h1_port = h1_port
        bl.log(f"starting nginx backend ({self.size >> 20} MiB sparse file; "
               "HTTP/1.1 and h2c ports)")
        self.nginx = bl.start_nginx(td.procs, "nginx-backend", self.tools["nginx"],
                                    backend_conf(td.dir / "backend", docroot, h1_port, h2_port),
                                    a.load_cpu)
        bl.log("starting the gRPC server")
        argv = ["taskset", "-c", str(a.load_cpu), sys.executable, str(Path(__file__).resolve()),
                "serve-grpc", str(grpc_port), str(self.grpc_limit)]
        self.grpc = td.procs.start("grpc-server", argv, td.dir / "grpc-server.log",
                                   stdin=subprocess.PIPE)
        bl.wait_listening(grpc_port, self.grpc, td.dir / "grpc-server.log")
        manifests = td.dir / "manifests"
        manifests.mkdir()
        (manifests / "h2c.yaml").write_text(
            h2c_route("nginx-h2c", H2C_HOST, h2_port) + "---\n"
            + h2c_route("grpc-big", GRPC_HOST, grpc_port))
        self.src = bl.interceptor_source(a.interceptor, td.dir)
        self.source = bl.describe_source(self.src, a.interceptor)
        self.extra_env = dict(kv.split("=", 1) for kv in a.env if "=" in kv)

    def interceptor(self, name):
        a = self.args
        # routes=1: bench.local to nginx's HTTP/1.1 port, next to h2c.yaml's two
        return bl.start_interceptor(self.td.procs, self.td.dir, self.h1_port, a.server_cpu,
                                    routes=1, src=self.src, name=name,
                                    extra_env=self.extra_env)

    # -- clients --

    def curl_argv(self, port, host, path, rate=None):
        argv = ["taskset", "-c", str(self.args.load_cpu), self.curl, "-sS",
                "--http2-prior-knowledge", "-o", "/dev/null",
                "-w", "%{size_download} %{http_version} %{http_code}",
                "-H", f"Host: {host}"]
        if rate and rate_bytes(rate) != float("inf"):
            argv += ["--limit-rate", rate]
        return argv + [f"http://127.0.0.1:{port}/{path}"]

    def grpc_argv(self, port, calls, concurrent, size):
        return ["taskset", "-c", str(self.args.load_cpu), sys.executable,
                str(Path(__file__).resolve()), "grpc-call", f"127.0.0.1:{port}", GRPC_HOST,
                str(calls), str(concurrent), str(size), str(self.grpc_limit)]

    def scenario(self, name):
        """(label, warm-up argv(port), measured argv(port), timeout, check(stdout)
        and warm-up check(stdout), each -> what went wrong or None)."""
        a = self.args
        if name.startswith("download"):
            host = bl.BENCH_HOST if name == "download-h1" else H2C_HOST
            upstream = "HTTP/1.1" if name == "download-h1" else "h2c"
            limit = (f"--limit-rate {a.rate}" if rate_bytes(a.rate) != float("inf")
                     else "no rate limit")
            label = f"{self.size >> 20} MiB download, h2c client {limit}, upstream {upstream}"
            timeout = min(self.size / rate_bytes(a.rate) * 4 + 60, 3600)

            def check(out, size=self.size):
                parts = out.split()
                if parts != [str(size), "2", "200"]:
                    return (f"curl wrote {out.strip()!r} (size_download http_version "
                            f"http_code), want '{size} 2 200'")
                return None

            return (label, lambda port: self.curl_argv(port, host, SMALL_FILE),
                    lambda port: self.curl_argv(port, host, BIG_FILE, a.rate), timeout,
                    check, lambda out: check(out, SMALL_SIZE))
        size = a.grpc_mb * 1024 * 1024
        calls, conc = ((a.grpc_calls, 1) if name == "grpc-seq"
                       else (a.grpc_concurrent, a.grpc_concurrent))
        label = (f"gRPC {a.grpc_mb} MiB each way, {calls} call(s) "
                 + ("in a row" if conc == 1 else "at once") + ", upstream h2c")

        def check(out, calls=calls):
            try:
                r = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                return f"gRPC client wrote {out[-500:]!r}"
            if r["ok"] != calls or r["errors"]:
                return f"{r['ok']}/{calls} calls OK: {'; '.join(r['errors'])[:1500]}"
            return None

        return (label, lambda port: self.grpc_argv(port, 1, 1, 1024),
                lambda port: self.grpc_argv(port, calls, conc, size), 300, check,
                lambda out: check(out, 1))

    def run(self, name, rep):
        a = self.args
        label, warm_argv, argv, timeout, check, warm_check = self.scenario(name)
        k = self.interceptor(f"keda-interceptor-{name}-{rep}")
        pid, port = k["pid"], k["proxy_port"]
        r = {"name": name, "label": label, "rep": rep, "error": None, "log": k["log"]}
        try:
            w = subprocess.run(warm_argv(port), capture_output=True, text=True, timeout=60)
            why = (f"exit {w.returncode}: {(w.stdout + w.stderr)[-800:]}" if w.returncode
                   else warm_check(w.stdout))
            if why:
                r["error"] = f"warm-up request failed: {why}"
                return self._done(r, k)
            time.sleep(0.5)
            r["before"] = vm_rss(pid)
            r["hwm_reset"] = reset_hwm(pid)
            sampler = Sampler(pid, a.interval)
            sampler.start()
            t0, ticks = time.monotonic(), bl.proc_ticks(pid)
            p = subprocess.Popen(argv(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                bl._signal_group(p.pid, 9)
                out, err = p.communicate()
                r["error"] = f"client did not finish in {timeout:.0f} s"
            except BaseException:  # Ctrl-C, SIGTERM: not left behind
                bl._signal_group(p.pid, 9)
                p.wait()
                raise
            r["seconds"] = time.monotonic() - t0
            r["cpu_s"] = (bl.proc_ticks(pid) - ticks) / bl.CLK_TCK
            sampler.stop()
            r["samples"] = sampler.samples
            status = bl.rss_kb(pid) if k["popen"].poll() is None else {}
            r["hwm"] = status.get("VmHWM") if r["hwm_reset"] else None
            r["after"] = status.get("VmRSS")
            r["peak"] = max([kb for _, kb in sampler.samples] + [r["hwm"] or 0])
            r["growth"] = r["peak"] - r["before"]
            if k["popen"].poll() is not None:
                r["error"] = f"keda-interceptor exited (status {k['popen'].returncode})"
            elif r["error"] is None and p.returncode != 0:
                r["error"] = f"client exit {p.returncode}: {(out + err).strip()[-1500:]}"
            elif r["error"] is None:
                r["error"] = check(out)
            r["client_out"] = out.strip()[-300:]
        except (OSError, RuntimeError, subprocess.TimeoutExpired, KeyError) as e:
            r["error"] = f"{type(e).__name__}: {e}"
        return self._done(r, k)

    def _done(self, r, k):
        p = k["popen"]
        if p.poll() is None:
            bl._signal_group(p.pid, 15)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                bl._signal_group(p.pid, 9)
                p.wait()
        try:
            r["log_tail"] = "\n".join(
                k["log"].read_text(errors="replace").strip().splitlines()[-20:])
        except OSError:
            r["log_tail"] = "(no log)"
        self.runs.append(r)
        verdict = verdict_of(r)
        bl.log(f"{r['name']} run {r['rep']}: {verdict}"
               + (f", growth {mb(r['growth'])} MB in {r['seconds']:.1f} s"
                  if "growth" in r else ""))
        return r


def verdict_of(r):
    if r["error"]:
        return "FAIL (" + r["error"].splitlines()[0][:120] + ")"
    if r["growth"] > BOUND_MB * 1024:
        return f"OVER (> {BOUND_MB} MB)"
    return f"PASS (<= {BOUND_MB} MB)"


def timeline(samples, step=1.0):
    """Highest VmRSS (MB) in each C{step}-second slot."""
    slots = {}
    for t, kb in samples:
        i = int(t // step)
        slots[i] = max(slots.get(i, 0), kb)
    out = []  # [MB, seconds] runs of equal values
    for i in sorted(slots):
        v = f"{slots[i] / 1024:.0f}"
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return " ".join(v if n == 1 else f"{v} (x{n})" for v, n in out)


def report(args, bench, tools):
    print()
    print("## keda-interceptor memory under big HTTP/2 transfers")
    print()
    print("- command: " + " ".join([Path(sys.executable).name,
                                    "benchmarks/bench_h2_memory.py", *sys.argv[1:]]))
    print(f"- keda-interceptor: {bench.source}, twistd's default reactor"
          + (f", env {' '.join(args.env)}" if args.env else "")
          + f"; a fresh one per run, pinned to core {args.server_cpu}; nginx, the gRPC "
          f"server and the clients on core {args.load_cpu}")
    nginx = subprocess.run([tools["nginx"], "-v"], capture_output=True, text=True).stderr.strip()
    curl = subprocess.run([bench.curl, "--version"], capture_output=True,
                          text=True).stdout.split("\n")[0]
    import grpc

    print(f"- {nginx}; {curl.split(' (')[0]}; grpcio {grpc.__version__}; "
          f"Python {sys.version.split()[0]}")
    print(f"- RSS: VmRSS every {args.interval} s while the client runs, and VmHWM (reset "
          "before each run); before = VmRSS after one small warm-up request; growth = "
          f"peak - before; bound {BOUND_MB} MB (MB = MiB)")
    print()
    print("| scenario | run | RSS before MB | peak during MB | growth MB | verdict "
          f"(<= {BOUND_MB} MB) | duration s | interceptor CPU s | highest sample MB "
          "| VmHWM MB | RSS after MB | samples |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in bench.runs:
        if "growth" in r:
            top = max(kb for _, kb in r["samples"])
            print(f"| {r['label']} | {r['rep']} | {mb(r['before'])} | {mb(r['peak'])} | "
                  f"{mb(r['growth'])} | {verdict_of(r)} | {r['seconds']:.1f} | "
                  f"{r['cpu_s']:.1f} | {mb(top)} | "
                  f"{mb(r['hwm']) if r['hwm'] else '-'} | "
                  f"{mb(r['after']) if r['after'] else '-'} | {len(r['samples'])} |")
        else:
            print(f"| {r['label']} | {r['rep']} | - | - | - | {verdict_of(r)} | - | - | - | - "
                  "| - | - |")
    print()
    by = {}
    for r in bench.runs:
        if "growth" in r and not r["error"]:
            by.setdefault(r["label"], []).append(r["growth"])
    if args.repeat > 1:
        for label, gs in by.items():
            print(f"- {label}: growth median {mb(statistics.median(gs))} MB, max "
                  f"{mb(max(gs))} MB over {len(gs)} run(s)")
    for r in bench.runs:
        if r["name"].startswith("download") and "seconds" in r and not r["error"]:
            print(f"- {r['name']} run {r['rep']}: {bench.size / r['seconds'] / 2 ** 20:.1f} "
                  "MiB/s achieved (" + (f"limit {args.rate})"
                                        if rate_bytes(args.rate) != float("inf")
                                        else "no limit)"))
    print("\nRSS timeline, MB (highest sample in each second; (xN): N seconds alike):\n")
    for r in bench.runs:
        if r.get("samples"):
            print(f"- {r['name']} run {r['rep']}: {timeline(r['samples'])}")
    for r in bench.runs:
        if r["error"] or ("growth" in r and r["growth"] > BOUND_MB * 1024):
            print(f"\n### {r['name']} run {r['rep']}: {verdict_of(r)}\n")
            print(f"{r['error'] or ''}\n\nend of {r['log'].name}:\n")
            print("\n".join("    " + line for line in r["log_tail"].splitlines()))
    sys.stdout.flush()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-grpc"]:
        return serve_grpc(int(argv[1]), int(argv[2]))
    if argv[:1] == ["grpc-call"]:
        return grpc_calls(argv[1], argv[2], *map(int, argv[3:7]))
    args = parse_args(argv)
    tools = bl.ensure_tools(["nginx"], install=not args.no_install)
    with bl.Teardown("keda-bench-h2mem-", keep=args.keep) as td:
        bench = Bench(args, td, tools)
        bench.start()
        for rep in range(1, args.repeat + 1):
            for name in args.scenarios:
                bl.log(f"run {rep}/{args.repeat}: {name}")
                bench.run(name, rep)
        report(args, bench, tools)
        bad = [r for r in bench.runs
               if r["error"] or r.get("growth", 0) > BOUND_MB * 1024]
        return 1 if bad else 0


if __name__ == "__main__":
    bl.run_main(main)
