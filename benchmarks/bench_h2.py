"""
HTTP/2 and gRPC through keda-interceptor, side by side with nginx and with
the backends direct, in one run.

Run: ``.venv/bin/python benchmarks/bench_h2.py [--duration 5] [--repeat 3]``
(``--quick``: a smoke test in well under 30 s).

It starts, on loopback only and in a temp dir:

  - an nginx backend (Debian package) answering every GET with a 29-byte
    body on an HTTP/1.1 port and, for the "backend direct" HTTP/2 row, on
    an h2c (prior knowledge) port as well;
  - a grpcio echo server (``grpc_echo.py``: ``grpc.aio``, one generic
    unary method returning its request's bytes);
  - nginx as a reverse proxy: ``listen ... http2`` on a plain port (h2c
    prior knowledge) and a plain HTTP/1.1 port, both ``proxy_pass`` to the
    backend's HTTP/1.1 port with upstream keep-alive; ``/bench.Echo/`` on
    the h2c port goes to the gRPC server by ``grpc_pass`` (keep-alive);
  - keda-interceptor (``twistd keda-interceptor --manifests DIR``) with
    ``--routes`` InterceptorRoutes as in ``bench_proxy.py`` (``bench.local``
    leads to the backend's HTTP/1.1 port) plus one more, ``grpc.bench.local``,
    whose Service port has ``appProtocol: kubernetes.io/h2c`` and leads to
    the gRPC server;

and measures, each row ``--duration`` s after ``--warmup`` s of unmeasured
load, ``--repeat`` times interleaved (the median by req/s is shown):

  1. HTTP/2: ``h2load -t1 -c 32 -m 10 -D SECONDS`` GETs over h2c prior
     knowledge (``:authority: bench.local``) to the backend direct,
     nginx-proxy and keda-interceptor; req/s from h2load, p50/p99 from its
     ``--log-file`` (per-request times);
  2. HTTP/1.1: ``wrk -t1 -c 32`` (as ``bench_proxy.py``) to nginx-proxy and
     keda-interceptor, for the ratio HTTP/2 / HTTP/1.1 of each (target for
     keda-interceptor: >= 0.5);
  3. gRPC unary: h2load POSTs of one 5-byte-prefixed gRPC message with
     ``content-type: application/grpc`` and ``te: trailers`` (``-c 4 -m 8``:
     32 calls in flight) to the gRPC server direct, nginx (grpc_pass) and
     keda-interceptor.  Before the load every gRPC target is checked twice:
     ``grpc_echo.py check`` (grpcio's own client, each call's status OK and
     payload echoed) and ``nghttp -v`` sending h2load's exact request (the
     trailers carry ``grpc-status: 0``); after it, h2load's DATA byte count
     must be one echoed message per call;
  4. memory: VmRSS/VmHWM of keda-interceptor idle, after its HTTP/2 rows
     and after its gRPC rows, and of nginx-proxy (master + worker) after
     all rows.

A keda-interceptor that does not answer an h2c GET (checked with
``nghttp``) keeps its HTTP/1.1 row; its HTTP/2 and gRPC rows are left out
and the reason printed.

Pinning (2-core machine, as ``bench_proxy.py``): the server under test is
alone on ``--server-cpu`` (0); the client (h2load, wrk) on ``--load-cpu``
(1); the nginx backend shares the load core while a proxy is measured and
moves to the server core for its "direct" row, so each HTTP row measures
"one server on one core".  The gRPC server (every thread) stays on the
load core in all gRPC rows, the direct one included: it is the bottleneck
of each, so the ratio measures the cost of the proxy in front of it.
``--interceptor``, ``--reactor`` and ``--env`` (repeatable) add one
keda-interceptor row set each, as in ``bench_proxy.py``; ``--cprofile FILE``
(with ``--cprofile-load http2|grpc``) runs one more interceptor under
cProfile after the table and prints its hot spots.  ``--check`` exits 1 if
keda-interceptor misses the target, had errors, or lost a row.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp  # noqa: E402
import benchlib as bl  # noqa: E402
import grpc_echo  # noqa: E402

HERE = Path(__file__).resolve().parent
GRPC_HOST = "grpc.bench.local"
#: keda-interceptor's HTTP/2 req/s must be at least this share of its
#: HTTP/1.1 req/s at the same connection count.
TARGET_H2_OVER_H1 = 0.5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured row (5)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of unmeasured load before each row (1; 0 = none)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each row N times, interleaved; report the median by req/s")
    ap.add_argument("--connections", type=int, default=32,
                    help="h2load -c and wrk -c for the HTTP rows (32)")
    ap.add_argument("--streams", type=int, default=10,
                    help="h2load -m (streams in flight per connection) for HTTP/2 (10)")
    ap.add_argument("--grpc-connections", type=int, default=4,
                    help="h2load -c for the gRPC rows (4)")
    ap.add_argument("--grpc-streams", type=int, default=8,
                    help="h2load -m for the gRPC rows (8; 4 x 8 = 32 calls in flight)")
    ap.add_argument("--rows", default="http2,http1,grpc",
                    help="comma-separated row groups: http2, http1, grpc (all by default)")
    ap.add_argument("--interceptor", action="append", metavar="SRC",
                    help="code to run keda-interceptor from: 'worktree' (default), a git ref "
                         "of this checkout (exported with git archive, e.g. HEAD), or a "
                         "directory holding keda_proxy/; repeat for one row set each")
    ap.add_argument("--reactor", action="append", metavar="NAME",
                    help="twistd -r NAME for keda-interceptor (e.g. epoll, keda-epoll); "
                         "repeat for one row set each")
    ap.add_argument("--env", action="append", metavar="K=V[,K=V]",
                    help="environment for keda-interceptor; repeat to compare settings side "
                         "by side: one row set per value ('' for none)")
    ap.add_argument("--no-interceptor", action="store_true",
                    help="only the nginx and direct rows")
    ap.add_argument("--routes", type=int, default=200, help="InterceptorRoutes loaded (200)")
    ap.add_argument("--server-cpu", type=int, default=0,
                    help="core of the server under test (0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="core of h2load and wrk (1)")
    ap.add_argument("--backend-cpu", type=int, default=None,
                    help="core of the backends while a proxy is measured (the load core)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 s rows, no warm-up, 1 run, 20 routes")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="after the table, start one more keda-interceptor (the first row "
                         "set's code, reactor and env) under twistd's cProfile (stats to "
                         "FILE), load it with the HTTP/2 row's h2load for --duration s, and "
                         "print calls per request and the hot spots")
    ap.add_argument("--cprofile-load", choices=("http2", "grpc"), default="http2",
                    help="the load for --cprofile: the HTTP/2 row's (default) or the gRPC "
                         "row's")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if keda-interceptor's HTTP/2 / HTTP/1.1 req/s is below "
                         f"{TARGET_H2_OVER_H1}, a row it was to run was left out, or any of "
                         "its rows had errors")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="wait for other processes to use under 10%% of a core before "
                         "measuring and again before each row, up to S seconds in all "
                         "(0: do not wait)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing nginx/wrk/h2load")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat, args.routes = 1, 0, 1, 20
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = set(args.rows) - {"http2", "http1", "grpc"}
    if bad:
        ap.error(f"unknown row group(s): {', '.join(sorted(bad))}")
    args.interceptor = [] if args.no_interceptor else (args.interceptor or ["worktree"])
    args.reactor = args.reactor or [None]
    args.env = args.env or [""]
    if args.backend_cpu is None:
        args.backend_cpu = args.load_cpu
    bl.check_cores(ap, args, ("server_cpu", "load_cpu", "backend_cpu"))
    return args


# -- tools ---------------------------------------------------------------------------------

H2_HINT = "apt-get install -y nghttp2-client"


def ensure_h2_tools(install: bool) -> dict:
    """nginx and wrk through benchlib; h2load and nghttp (Debian's
    nghttp2-client) here."""
    tools = bl.ensure_tools(["nginx", "wrk"], install=install)
    missing = [n for n in ("h2load", "nghttp") if bl._which(n) is None]
    if missing and install and os.geteuid() == 0 and bl._which("apt-get"):
        bl.log(f"installing nghttp2-client ({H2_HINT})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=False,
                       env=env, stdout=subprocess.DEVNULL)
        missing = [n for n in ("h2load", "nghttp") if bl._which(n) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: install with `{H2_HINT}` (as root)")
    tools.update({n: bl._which(n) for n in ("h2load", "nghttp")})
    return tools


# -- configuration -------------------------------------------------------------------------


def backend_conf(dir: Path, h1_port: int, h2_port: int) -> Path:
    """The nginx backend: L{bl.BODY} for every request, on an HTTP/1.1 port
    and an h2c prior-knowledge port."""
    location = f"""\
        location / {{
            default_type text/plain;
            return 200 "{bl.BODY.rstrip()}\\n";
        }}"""
    body = f"""\
    server {{
        listen 127.0.0.1:{h1_port} backlog=4096;
{location}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
{location}
    }}"""
    return bl.write_nginx(dir, body)


def proxy_conf(dir: Path, h2_port: int, h1_port: int, backend_port: int,
               grpc_port: int, keepalive: int = 64) -> Path:
    """nginx as a proxy: h2c on C{h2_port}, HTTP/1.1 on C{h1_port}, both to
    the backend's HTTP/1.1 port with keep-alive; gRPC by grpc_pass.
    C{keepalive} idle upstream connections are kept: each HTTP/2 stream in
    flight needs an HTTP/1.1 connection of its own, and nginx closes any
    returned beyond that number, so it must cover the streams in flight."""
    proxy = """\
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;"""
    body = f"""\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    upstream grpcbackend {{
        server 127.0.0.1:{grpc_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
        location / {{
{proxy}
        }}
        location /{grpc_echo.SERVICE}/ {{
            grpc_pass grpc://grpcbackend;
        }}
    }}
    server {{
        listen 127.0.0.1:{h1_port} backlog=4096;
        location / {{
{proxy}
        }}
    }}"""
    return bl.write_nginx(dir, body)


def grpc_manifest(dir: Path, grpc_port: int) -> None:
    """One more route next to L{bl.write_manifests}' ones: C{grpc.bench.local}
    to Service C{grpc-echo}, whose port says C{appProtocol: kubernetes.io/h2c}."""
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "grpc.yaml").write_text(bl.route_manifest("grpc-echo", GRPC_HOST, grpc_port,
                                                     route="grpc", port_name="grpc",
                                                     app_protocol=bl.H2C))


def pin_threads(pid: int, cpu: int) -> None:
    """Every thread of C{pid} (grpcio runs several) to C{cpu}."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:
            pass


# -- clients -------------------------------------------------------------------------------

_H2LOAD_TOTALS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.M)
_H2LOAD_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_H2LOAD_RATE = re.compile(r"^finished in ([\d.]+)s, ([\d.]+) req/s", re.M)
_H2LOAD_DATA = re.compile(r"^traffic: .*?, [\d.]+\w*B \((\d+)\) data", re.M)
_H2LOAD_PROTO = re.compile(r"^Application protocol: (\S+)", re.M)


def run_h2load(tools, url, conns, streams, duration, cpu, authority, log_file=None,
               data=None, headers=()):
    """One h2load run (-t1, timing-based); returns req/s, counts, p50/p99 in
    microseconds (from C{log_file}, when given), data bytes and client CPU."""
    argv = ["taskset", "-c", str(cpu), tools["h2load"], "-t1", f"-c{conns}", f"-m{streams}",
            "-D", str(duration), "-H", f":authority: {authority}"]
    for h in headers:
        argv += ["-H", h]
    if data is not None:
        argv += ["-d", str(data)]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    argv.append(url)
    rc, text, cpu_s = bl.run_client(argv, duration + 30)
    totals, rate = _H2LOAD_TOTALS.search(text), _H2LOAD_RATE.search(text)
    if rc != 0 or not totals or not rate:
        raise RuntimeError(f"h2load failed ({rc}): {' '.join(argv)}\n{text}")
    total, started, done, ok, failed, errored, timeout = map(int, totals.groups())
    status = _H2LOAD_STATUS.search(text)
    s2, s3, s4, s5 = map(int, status.groups()) if status else (0, 0, 0, 0)
    data_m, proto = _H2LOAD_DATA.search(text), _H2LOAD_PROTO.search(text)
    secs = float(rate.group(1))
    r = {
        "rps": float(rate.group(2)), "requests": done, "seconds": secs,
        "failed": failed, "errored": errored, "timeout": timeout, "non2xx": s3 + s4 + s5,
        "data_bytes": int(data_m.group(1)) if data_m else None,
        "proto": proto.group(1) if proto else "?",
        "client_cpu": 100.0 * cpu_s / max(secs, 1e-9),
        "text": text,
    }
    r["errors"] = failed + errored + timeout + r["non2xx"]
    r["p50"] = r["p99"] = None
    if log_file is not None:
        times = sorted(int(line.split("\t")[2]) for line in Path(log_file).read_text()
                       .splitlines() if line.count("\t") >= 2)
        if times:
            r["p50"], r["p99"] = times[len(times) // 2], times[int(len(times) * 0.99)]
        Path(log_file).unlink()
    return r


def from_wrk(r):
    """bench_proxy's run_wrk result in the shape of L{run_h2load}'s."""
    return {"rps": r["rps"], "requests": r["requests"], "p50": r["p50"], "p99": r["p99"],
            "errors": r["errors"], "client_cpu": r["wrk_cpu"], "proto": "http/1.1",
            "non2xx": r["status"], "failed": r["socket_errors"], "errored": 0, "timeout": 0,
            "data_bytes": None, "text": r["text"]}


def nghttp(tools, url, authority, data=None, headers=(), verbose=False, timeout=10):
    argv = [tools["nghttp"], "-t", "5", "-H", f":authority: {authority}"]
    for h in headers:
        argv += ["-H", h]
    if data is not None:
        argv += ["-d", str(data)]
    if verbose:
        argv.append("-v")
    argv.append(url)
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"nghttp did not finish in {timeout} s"
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def check_h2_get(tools, url, authority):
    """None if an h2c GET to C{url} answers 200 with the backend's body, else
    what went wrong."""
    rc, out = nghttp(tools, url, authority, verbose=True)
    if rc is None:
        return out
    statuses = re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", out)
    if rc != 0 or statuses != ["200"] or bl.BODY.rstrip() not in out:
        return f"nghttp exit {rc}, :status {statuses or 'none'}:\n" + _tail(out)
    return None


def check_grpc(tools, host, port, authority, msg_file, calls):
    """None if gRPC calls to host:port work, checked with grpcio's client and
    with nghttp sending h2load's request, else what went wrong."""
    p = subprocess.run([sys.executable, str(HERE / "grpc_echo.py"), "check",
                        f"{host}:{port}", authority, str(calls)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return f"grpcio client: {(p.stdout + p.stderr).strip()[-1500:]}"
    rc, out = nghttp(tools, f"http://{host}:{port}{grpc_echo.METHOD}", authority,
                     data=msg_file, headers=GRPC_HEADERS, verbose=True)
    if rc is None:
        return out
    grpc_status = re.findall(r"recv \(stream_id=\d+\) grpc-status: (\S*)", out)
    data = [int(n) for n in re.findall(r"recv DATA frame <length=(\d+)", out)]
    if rc != 0 or grpc_status != ["0"] or sum(data) != len(grpc_echo.grpc_frame()):
        return (f"nghttp exit {rc}, grpc-status {grpc_status or 'none'}, DATA bytes "
                f"{sum(data)} (want {len(grpc_echo.grpc_frame())}):\n" + _tail(out))
    return None


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def _tail(text, n=25):
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


# -- the run -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, td: bl.Teardown, tools):
        self.args, self.td, self.tools = args, td, tools
        self.wrk_script = td.dir / "report.lua"
        self.wrk_script.write_text(bp.WRK_LUA)
        self.msg = td.dir / "grpc-message.bin"
        self.msg.write_bytes(grpc_echo.grpc_frame())
        self.labels = {}
        self.skipped = {}  # row key -> why it is left out
        self.memory = []   # (process, when, rss dict)

    def start(self):
        a, td, tools = self.args, self.td, self.tools
        be_h1, be_h2, px_h2, px_h1, grpc_port = bl.free_ports(5)
        self.backend_h1_port = be_h1
        bl.log("starting nginx backend")
        self.backend = bl.start_nginx(td.procs, "nginx-backend", tools["nginx"],
                                      backend_conf(td.dir / "backend", be_h1, be_h2),
                                      a.backend_cpu)
        self.backend_pids = [self.backend["master"], *self.backend["workers"]]
        bl.log("starting the gRPC echo server")
        argv = ["taskset", "-c", str(a.backend_cpu), sys.executable,
                str(HERE / "grpc_echo.py"), "serve", str(grpc_port)]
        self.grpc = td.procs.start("grpc-echo", argv, td.dir / "grpc-echo.log",
                                   stdin=subprocess.PIPE)
        bl.wait_listening(grpc_port, self.grpc, td.dir / "grpc-echo.log")
        bl.log("starting nginx reverse proxy (h2c, HTTP/1.1, grpc_pass)")
        self.nginx = bl.start_nginx(td.procs, "nginx-proxy", tools["nginx"],
                                    proxy_conf(td.dir / "proxy", px_h2, px_h1, be_h1,
                                               grpc_port, self.upstream_keepalive()),
                                    a.server_cpu)
        self.nginx_pids = [self.nginx["master"], *self.nginx["workers"]]

        # row key -> kind (http2, http1, grpc), url, authority, server pids, backend
        self.rows = {}
        http = "http://127.0.0.1:{}/"
        self._row("h2-direct", "backend direct (nginx, h2c)", "http2", http.format(be_h2),
                  bl.BENCH_HOST, self.backend_pids, None)
        self._row("h2-nginx", "nginx-proxy (h2c -> HTTP/1.1)", "http2", http.format(px_h2),
                  bl.BENCH_HOST, self.nginx_pids, "nginx")
        self._row("h1-nginx", "nginx-proxy (HTTP/1.1)", "http1", http.format(px_h1),
                  bl.BENCH_HOST, self.nginx_pids, "nginx")
        grpc_url = f"http://127.0.0.1:{{}}{grpc_echo.METHOD}"
        self._row("grpc-direct", "gRPC server direct (grpc.aio)", "grpc",
                  grpc_url.format(grpc_port), GRPC_HOST, [self.grpc.pid], None)
        self._row("grpc-nginx", "nginx-proxy (grpc_pass)", "grpc", grpc_url.format(px_h2),
                  GRPC_HOST, self.nginx_pids, "grpc")

        self.keda = {}
        self.sources = {}
        if a.interceptor:
            grpc_manifest(td.dir / "manifests", grpc_port)
            srcs = {spec: bl.interceptor_source(spec, td.dir) for spec in a.interceptor}
            sets = [(spec, r, e) for spec in a.interceptor for r in a.reactor for e in a.env]
            for i, (spec, reactor, env) in enumerate(sets):
                key = "keda" if i == 0 else f"keda{i}"
                opts = ["-r", reactor] if reactor else []
                extra_env = dict(kv.split("=", 1) for kv in env.split(",") if kv)
                tags = ([spec] if len(a.interceptor) > 1 else []) + (
                    [" ".join(opts) or "no -r"] if len(a.reactor) > 1 or reactor else []) + (
                    [env or "no env"] if len(a.env) > 1 or env else [])
                label = "keda-interceptor" + (f" [{', '.join(tags)}]" if tags else "")
                self.sources[label] = bl.describe_source(srcs[spec], spec) + (
                    f", twistd -r {reactor}" if opts else ", twistd's default reactor")
                bl.log(f"starting {label} with {a.routes} routes + the gRPC route "
                       f"from {self.sources[label]}")
                k = bl.start_interceptor(td.procs, td.dir, be_h1, a.server_cpu,
                                         routes=a.routes, src=srcs[spec], name=label,
                                         twistd_opts=opts, extra_env=extra_env)
                k.update(label=label, src=srcs[spec], opts=opts, env=extra_env)
                self.keda[key] = k
                port = k["proxy_port"]
                self._row(f"h2-{key}", f"{label} (h2c -> HTTP/1.1)", "http2",
                          http.format(port), bl.BENCH_HOST, [k["pid"]], "nginx")
                self._row(f"h1-{key}", f"{label} (HTTP/1.1)", "http1", http.format(port),
                          bl.BENCH_HOST, [k["pid"]], "nginx")
                self._row(f"grpc-{key}", f"{label} (h2c -> h2c)", "grpc",
                          grpc_url.format(port), GRPC_HOST, [k["pid"]], "grpc")
                self.memory.append((label, "idle, after start", bl.rss_kb(k["pid"])))
        kinds = ["http2", "http1", "grpc"]
        self.rows = {k: v for k, v in sorted(self.rows.items(),
                                             key=lambda kv: kinds.index(kv[1]["kind"]))
                     if v["kind"] in a.rows}
        self.verify()
        self.all_ours = {p for r in self.rows.values() for p in r["pids"]} | set(
            self.backend_pids) | {self.grpc.pid}

    def upstream_keepalive(self):
        a = self.args
        return max(64, a.connections * a.streams, a.grpc_connections * a.grpc_streams)

    def _row(self, key, label, kind, url, authority, pids, backend):
        self.labels[key] = label
        self.rows[key] = {"kind": kind, "url": url, "authority": authority, "pids": pids,
                          "backend": backend}

    def verify(self):
        """Every row answers correctly before any load; rows of the
        interceptor that do not are left out (with the reason), others are
        a failure of the benchmark itself."""
        for key, row in list(self.rows.items()):
            if row["kind"] == "http1":
                try:
                    bl.check_body(row["url"], row["authority"])
                    why = None
                except (OSError, RuntimeError) as e:
                    why = str(e)
            elif row["kind"] == "http2":
                why = check_h2_get(self.tools, row["url"], row["authority"])
            else:
                port = int(row["url"].split(":")[2].split("/")[0])
                why = check_grpc(self.tools, "127.0.0.1", port, row["authority"], self.msg,
                                 3 if self.args.quick else 20)
            if why is None:
                continue
            if "keda" not in key:
                raise RuntimeError(f"{self.labels[key]} does not answer as it should: {why}")
            bl.log(f"leaving out {self.labels[key]}: {why.splitlines()[0]}")
            self.skipped[key] = why
            del self.rows[key]

    def server_state(self, key):
        """Whether the server of row C{key} still runs, and its log's end."""
        for k in self.keda.values():
            if k["pid"] in self.rows[key]["pids"]:
                rc = k["popen"].poll()
                log = k["log"]
                break
        else:
            procs = {"nginx": self.nginx, "backend": self.backend}
            which = "nginx" if self.nginx["master"] in self.rows[key]["pids"] else "backend"
            rc = procs[which]["popen"].poll()
            log = Path(self.td.dir / ("proxy" if which == "nginx" else "backend")
                       / "error.log")
            if key.startswith("grpc-direct"):
                rc, log = self.grpc.poll(), self.td.dir / "grpc-echo.log"
        state = "still running" if rc is None else f"gone (exit status {rc})"
        try:
            tail = _tail(log.read_text(errors="replace"), 15)
        except OSError:
            tail = "    (no log)"
        return f"the server is {state}; the end of {log.name}:\n{tail}"

    def placement(self, key):
        """Pin the backend for this row; return its pids if it is not the
        server under test.  The nginx backend: on the load core, or alone on
        the server core for its 'direct' row.  The gRPC server: on the load
        core in every row, the direct one included, since it (Python) is
        the bottleneck of every gRPC row: the ratio is then what putting a
        proxy in front of it costs, not what a core of its own gains it."""
        a, row = self.args, self.rows[key]
        direct = key.endswith("-direct")
        if row["kind"] == "grpc":
            pin_threads(self.grpc.pid, a.backend_cpu)
            return [self.grpc.pid] if not direct else []
        bl.pin(self.backend_pids, a.server_cpu if direct else a.backend_cpu)
        return self.backend_pids if not direct else []

    def load(self, key, duration, log_file=None, meter=None):
        a, row, tools = self.args, self.rows[key], self.tools
        if row["kind"] == "http1":
            return from_wrk(bp.run_wrk(tools, row["url"], a.connections, duration, a.load_cpu,
                                       self.wrk_script, meter))
        if row["kind"] == "http2":
            return run_h2load(tools, row["url"], a.connections, a.streams, duration,
                              a.load_cpu, row["authority"], log_file)
        return run_h2load(tools, row["url"], a.grpc_connections, a.grpc_streams, duration,
                          a.load_cpu, row["authority"], log_file, data=self.msg,
                          headers=GRPC_HEADERS)

    def measure(self, key):
        a = self.args
        backend = self.placement(key)
        if a.warmup:
            self.load(key, a.warmup)
        groups = {"server": self.rows[key]["pids"]}
        if backend:
            groups["backend"] = backend
        log_file = self.td.dir / f"{key}.h2load.tsv"
        with bl.CpuMeter(groups, ours=self.all_ours) as meter:
            r = self.load(key, a.duration, log_file)
        r["cpu"] = meter.pct
        if self.rows[key]["kind"] == "grpc" and r["data_bytes"] is not None:
            # every call answered by one echoed message (h2load also counts
            # the calls it cut off at the end, which may have data)
            want = r["requests"] * len(grpc_echo.grpc_frame())
            r["data_ok"] = r["data_bytes"] >= want
        return r


# -- report --------------------------------------------------------------------------------


def fmt_ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"


def fmt_err(r):
    if not r["errors"]:
        return "0"
    return (f"{r['errors']} ({r['non2xx']} non-2xx, {r['failed']} failed, "
            f"{r['errored']} errored, {r['timeout']} timeout)")


def per_cpu_s(r):
    """Requests per CPU-second of the server under test: what a row costs,
    less sensitive to other load on the machine than req/s."""
    return r["rps"] / max(r["cpu"]["server"], 1e-9) * 100


def ratio(a, b):
    return "-" if a is None or b is None or not b else f"{a / b:.2f}"


def table(results, labels, keys, ref_of, ref_name):
    head = (f"| target | client | req/s | p50 ms | p99 ms | errors | server CPU % "
            f"| req per server CPU-s | backend CPU % | client CPU % | other CPU % "
            f"| req/s vs {ref_name} | p99 vs {ref_name} |")
    rows = [head, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        r = results.get(key)
        if r is None:
            continue
        ref = results.get(ref_of(key))
        cpu = r["cpu"]
        backend = f"{cpu['backend']:.0f}" if "backend" in cpu else "-"
        client = "wrk" if r["proto"] == "http/1.1" else f"h2load ({r['proto']})"
        rows.append(
            f"| {labels[key]} | {client} | {r['rps']:,.0f} | {fmt_ms(r['p50'])} | "
            f"{fmt_ms(r['p99'])} | {fmt_err(r)} | {cpu['server']:.0f} | "
            f"{per_cpu_s(r):,.0f} | {backend} | "
            f"{r['client_cpu']:.0f} | {cpu['other']:.0f} | "
            f"{ratio(r['rps'], ref['rps']) if ref else '-'} | "
            f"{ratio(r['p99'], ref['p99']) if ref else '-'} |")
    return "\n".join(rows)


def environment(tools):
    import grpc

    try:
        import h2
        h2_version = h2.__version__
    except ImportError:
        h2_version = "not installed"
    lines = bp.environment(tools)
    lines.append(f"{bl.first_line([tools['h2load'], '--version'])}; grpcio {grpc.__version__}; "
                 f"h2 {h2_version}")
    return lines


def mb(kb):
    return f"{kb / 1024:.1f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = ensure_h2_tools(install=not args.no_install)
    with bl.Teardown("keda-bench-h2-", keep=args.keep) as td:
        bench = Bench(args, td, tools)
        bench.start()
        deadline = time.monotonic() + args.wait_quiet
        idle_bg = wait_quiet(deadline)
        keys = list(bench.rows)
        runs = {}
        for rep in range(args.repeat):
            for key in keys:
                if key in bench.skipped:
                    continue
                if args.wait_quiet:
                    wait_quiet(deadline, 0.5)
                bl.log(f"run {rep + 1}/{args.repeat}: {bench.labels[key]}, {args.duration}s")
                try:
                    r = bench.measure(key)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    # A client that could not finish: say what it saw and
                    # what became of the server, and carry on without the row.
                    why = f"failed under load in run {rep + 1}: {e}\n{bench.server_state(key)}"
                    bl.log(f"{bench.labels[key]}: {why}")
                    bench.skipped[key] = why
                    continue
                runs.setdefault(key, []).append(r)
                kind, _, which = key.partition("-")
                if which in bench.keda and rep == args.repeat - 1:
                    k = bench.keda[which]
                    if k["popen"].poll() is None:
                        what = {"h2": "HTTP/2", "h1": "HTTP/1.1", "grpc": "gRPC"}[kind]
                        bench.memory.append((k["label"], f"after its {what} rows",
                                             bl.rss_kb(k["pid"])))
        nginx_rss = [bl.rss_kb(p) for p in bench.nginx_pids]
        bench.memory.append(("nginx-proxy (master + worker)", "after all rows",
                             {k: sum(r[k] for r in nginx_rss) for k in ("VmRSS", "VmHWM")}))
        died = [f"{k['label']} exited (status {k['popen'].returncode}) during the run"
                for k in bench.keda.values() if k["popen"].poll() is not None]
        results = {}
        for key, rs in runs.items():
            rs = sorted(rs, key=lambda r: r["rps"])
            results[key] = rs[len(rs) // 2]
        report(args, bench, tools, results, idle_bg, died)
        rc = 1 if args.check and (died or failures(args, bench, results)) else 0
        if args.cprofile and "keda" in bench.keda:
            cprofile(bench, Path(args.cprofile).resolve())
        return rc


def wait_quiet(deadline, probe=1.0):
    """CPU used by other processes (% of a core) over C{probe} s, probed
    again every 2 s while above 10% and C{deadline} has not passed."""
    busy = bp.background_check(probe)
    while busy > 10 and time.monotonic() < deadline:
        bl.log(f"other processes use {busy:.0f}% of a core; waiting for quiet")
        time.sleep(2)
        busy = bp.background_check(probe)
    return busy


def cprofile(bench, out_path: Path, top=25):
    """One more interceptor, as the first row set's, under cProfile; loaded
    like the HTTP/2 row (h2c -> HTTP/1.1)."""
    a, base = bench.args, bench.keda["keda"]
    k = bl.start_cprofiled(bench.td, bench.backend_h1_port, a.server_cpu, out_path, a.routes,
                           src=base["src"], twistd_opts=base["opts"], extra_env=base["env"])
    bl.pin(bench.backend_pids, a.backend_cpu)
    pin_threads(bench.grpc.pid, a.backend_cpu)
    port = k["proxy_port"]
    if a.cprofile_load == "grpc":
        why = check_grpc(bench.tools, "127.0.0.1", port, GRPC_HOST, bench.msg, 3)
        load = (f"gRPC, h2load -c {a.grpc_connections} -m {a.grpc_streams}",
                f"http://127.0.0.1:{port}{grpc_echo.METHOD}", a.grpc_connections,
                a.grpc_streams, GRPC_HOST, dict(data=bench.msg, headers=GRPC_HEADERS))
    else:
        why = check_h2_get(bench.tools, f"http://127.0.0.1:{port}/", bl.BENCH_HOST)
        load = (f"h2c GET, h2load -c {a.connections} -m {a.streams}",
                f"http://127.0.0.1:{port}/", a.connections, a.streams, bl.BENCH_HOST, {})
    if why:
        bl.log(f"the cProfile'd interceptor does not answer as it should: {why}")
        return
    what, url, conns, streams, authority, extra = load
    r = run_h2load(bench.tools, url, conns, streams, a.duration, a.load_cpu, authority,
                   **extra)
    bl.report_cprofile(k, out_path, r["requests"], r["rps"], f"{what}, {a.duration}s", top)


def failures(args, bench, results):
    out = []
    for key in bench.keda:
        for kind in args.rows:
            rk = {"http2": "h2-", "http1": "h1-", "grpc": "grpc-"}[kind] + key
            if rk in bench.skipped:
                out.append(f"{bench.labels[rk]} left out")
            elif rk in results and results[rk]["errors"]:
                out.append(f"{bench.labels[rk]}: errors")
            elif rk in results and results[rk].get("data_ok") is False:
                out.append(f"{bench.labels[rk]}: short of echoed gRPC bytes")
        h2, h1 = results.get(f"h2-{key}"), results.get(f"h1-{key}")
        if h2 and h1 and h2["rps"] / h1["rps"] < TARGET_H2_OVER_H1:
            out.append(f"{bench.keda[key]['label']}: HTTP/2 / HTTP/1.1 below target")
    return out


def report(args, bench, tools, results, idle_bg, died):
    keys = list(results)
    print()
    print("## keda-interceptor HTTP/2 and gRPC benchmark")
    print()
    print("- command: " + " ".join([Path(sys.executable).name, "benchmarks/bench_h2.py",
                                    *sys.argv[1:]]))
    for line in environment(tools):
        print(f"- {line}")
    for label, where in bench.sources.items():
        print(f"- {label}: {where}; {args.routes} InterceptorRoutes + 1 gRPC route "
              "(Service port appProtocol kubernetes.io/h2c)")
    print(f"- {args.duration}s per row after {args.warmup}s warm-up; {args.repeat} run(s) "
          "per row" + (" (median by req/s)" if args.repeat > 1 else ""))
    print(f"- HTTP/2: h2load -t1 -c {args.connections} -m {args.streams} -D {args.duration}, "
          f"GET /, :authority {bl.BENCH_HOST}, h2c prior knowledge; p50/p99 from "
          f"--log-file. HTTP/1.1: wrk -t1 -c {args.connections}, Host {bl.BENCH_HOST}")
    print(f"- gRPC: h2load -t1 -c {args.grpc_connections} -m {args.grpc_streams} "
          f"-D {args.duration} -d MSG -H 'content-type: application/grpc' "
          f"-H 'te: trailers', POST {grpc_echo.METHOD}, :authority {GRPC_HOST}; MSG is one "
          f"{len(grpc_echo.grpc_frame())}-byte length-prefixed message")
    print(f"- nginx-proxy keeps {bench.upstream_keepalive()} idle upstream connections "
          "(keepalive), as many as requests in flight; keda-interceptor runs with its "
          "defaults (KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST 200) unless --env says otherwise")
    print(f"- pinned: core {args.server_cpu}: the server under test (nginx-proxy master + "
          f"1 worker, or keda-interceptor); core {args.load_cpu}: h2load/wrk; core "
          f"{args.backend_cpu}: the nginx backend while a proxy runs, moved to core "
          f"{args.server_cpu} for its 'direct' row; core {args.backend_cpu}: the gRPC server "
          f"(every thread) in every gRPC row, the direct one too (core {args.server_cpu} "
          "is then idle)")
    print(f"- other processes used {idle_bg:.0f}% of a core while the benchmark was idle"
          + ("  <-- NOISY MACHINE: figures are lower bounds" if idle_bg > 10 else ""))

    def h2_ref(key):
        return "h2-nginx" if key != "h2-nginx" else None

    def h1_ref(key):
        return "h1-nginx" if key != "h1-nginx" else None

    def grpc_ref(key):
        return "grpc-direct" if key != "grpc-direct" else None

    h2_keys = [k for k in keys if bench.rows[k]["kind"] == "http2"]
    h1_keys = [k for k in keys if bench.rows[k]["kind"] == "http1"]
    grpc_keys = [k for k in keys if bench.rows[k]["kind"] == "grpc"]
    if h2_keys or h1_keys:
        print(f"\n### HTTP/2 and HTTP/1.1, {args.connections} connections\n")
        print(table(results, bench.labels, h2_keys, h2_ref, "nginx h2c"))
        if h1_keys:
            print()
            print(table(results, bench.labels, h1_keys, h1_ref, "nginx HTTP/1.1"))
    if grpc_keys:
        print(f"\n### gRPC unary, {args.grpc_connections * args.grpc_streams} calls in "
              "flight\n")
        print(table(results, bench.labels, grpc_keys, grpc_ref, "direct"))
    if bench.memory:
        print("\n### Memory\n")
        print("| process | when | VmRSS MB | VmHWM MB |")
        print("|---|---|---:|---:|")
        for label, when, rss in bench.memory:
            print(f"| {label} | {when} | {mb(rss['VmRSS'])} | {mb(rss['VmHWM'])} |")
    print()
    notes = []
    nh2, nh1 = results.get("h2-nginx"), results.get("h1-nginx")
    if nh2 and nh1:
        notes.append(f"nginx-proxy HTTP/2 / HTTP/1.1 req/s: {ratio(nh2['rps'], nh1['rps'])}")
    for key, k in bench.keda.items():
        label = k["label"]
        h2, h1, g = (results.get(f"h2-{key}"), results.get(f"h1-{key}"),
                     results.get(f"grpc-{key}"))
        if h2 and nh2:
            notes.append(f"{label} / nginx-proxy over h2c: req/s "
                         f"{ratio(h2['rps'], nh2['rps'])}, p99 {ratio(h2['p99'], nh2['p99'])}")
        if h2 and h1:
            ok = h2["rps"] / h1["rps"] >= TARGET_H2_OVER_H1
            notes.append(f"{label} HTTP/2 / HTTP/1.1 req/s at {args.connections} connections: "
                         f"{h2['rps']:,.0f} / {h1['rps']:,.0f} = {h2['rps'] / h1['rps']:.3f}"
                         f" (target >= {TARGET_H2_OVER_H1}: {'PASS' if ok else 'FAIL'}); "
                         f"per CPU-second of its own: {per_cpu_s(h2):,.0f} / "
                         f"{per_cpu_s(h1):,.0f} = {per_cpu_s(h2) / per_cpu_s(h1):.3f}")
        if g and results.get("grpc-direct"):
            gd = results["grpc-direct"]
            notes.append(f"{label} gRPC calls/s / direct: {g['rps']:,.0f} / {gd['rps']:,.0f} "
                         f"= {ratio(g['rps'], gd['rps'])}"
                         + (f"; / nginx grpc_pass: {ratio(g['rps'], results['grpc-nginx']['rps'])}"
                            if "grpc-nginx" in results else ""))
    for key in keys:
        r = results[key]
        if r.get("data_ok") is False:
            notes.append(f"{bench.labels[key]}: h2load received {r['data_bytes']} DATA bytes "
                         f"for {r['requests']} calls: not every call was answered by its echo")
        if r["cpu"]["other"] > 10:
            notes.append(f"{bench.labels[key]}: other load {r['cpu']['other']:.0f}% of a core")
        if r["cpu"].get("steal", 0) > 2:
            notes.append(f"{bench.labels[key]}: the hypervisor stole {r['cpu']['steal']:.0f}% "
                         "of a core")
    for key, why in bench.skipped.items():
        notes.append(f"left out: {bench.labels.get(key, key)}:\n{why}")
    notes += died
    for n in notes:
        print(f"- {n}")
    sys.stdout.flush()


if __name__ == "__main__":
    bl.run_main(main)
