"""
Shared plumbing for the load benchmarks (``bench_proxy.py``,
``bench_h2.py``, ``bench_idle_conns.py``, ...): tools, ports, manifests,
nginx, interceptor and load-client processes, CPU accounting, cProfile
reports and teardown.

Every process is started in its own session (process group) and pinned
with ``taskset``; L{Processes.stop_all} ends each group with SIGTERM, then
SIGKILL, and runs on normal exit, on an exception, on Ctrl-C, and on
SIGTERM/SIGHUP sent to the benchmark.  Only the processes this module
started are ever signalled.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The backend's answer; small, fixed length.
BODY = "hello from the nginx backend\n"
#: The route the load targets (route 0 of the generated ones).
BENCH_HOST = "bench.local"
#: The Service port appProtocol for an HTTP/2 (prior knowledge) upstream.
H2C = "kubernetes.io/h2c"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- tools -------------------------------------------------------------------

#: the Debian package of a tool, where the names differ
_PACKAGES = {"go": "golang-go"}


def ensure_tools(names: Iterable[str], install: bool = True, without: str = "") -> Dict[str, str]:
    """Paths of the Debian tools needed (``nginx``, ``wrk``, ``go``).
    Missing ones are installed with apt-get when running as root and
    C{install} is true; otherwise exit with the command to run (and
    C{without}: how to do without them, if one can)."""
    names = list(names)
    missing = [n for n in names if _which(n) is None]
    packages = [_PACKAGES.get(n, n) for n in missing]
    hint = f"apt-get update && apt-get install -y {' '.join(packages)}"
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(packages)} from Debian ({hint})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        missing = [n for n in names if _which(n) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: install with `{hint}` "
                 f"(as root), then run again{', or ' + without if without else ''}")
    return {n: _which(n) for n in names}


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def check_cores(ap, args, names: Iterable[str] = ("server_cpu", "load_cpu")) -> None:
    """Exit through C{ap.error} if a core option (C{args.server_cpu} is
    C{--server-cpu}) names a core this machine does not have."""
    ncpu = os.cpu_count() or 1
    for name in names:
        if getattr(args, name) >= ncpu:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: only {ncpu} cores")


def first_line(argv: List[str]) -> str:
    """The first line a command writes (stdout, then stderr), e.g. its
    version; C{"?"} if it cannot run or writes nothing."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def twistd_path() -> str:
    """The twistd of the Python running this script (the project's venv)."""
    path = Path(sys.executable).parent / "twistd"
    if not path.exists():
        sys.exit(f"no twistd next to {sys.executable}; run with the project's "
                 ".venv/bin/python (make install)")
    return str(path)


def free_ports(n: int) -> List[int]:
    """C{n} distinct free TCP ports on 127.0.0.1."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE towards C{want}; returns the soft
    limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- processes -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Die with the benchmark even if it is SIGKILLed (direct children only;
    # nginx workers are reached through the process group).
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Processes:
    """The processes a benchmark started; stops them all, once.

    Each process group is also written to C{pgid_file}, which the
    L{Teardown} reaper reads if the benchmark is SIGKILLed.
    """

    def __init__(self, pgid_file: Optional[Path] = None):
        self.procs: List[tuple] = []  # (name, Popen, logfile)
        self._stopped = False
        self.pgid_file = pgid_file

    def start(self, name: str, argv: List[str], log_path: Path, env=None,
              cwd=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        logf = open(log_path, "wb")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                             cwd=cwd, start_new_session=True, preexec_fn=_child_setup,
                             stdin=stdin)
        self.procs.append((name, p, logf))
        if self.pgid_file is not None:
            with open(self.pgid_file, "a") as f:
                f.write(f"{p.pid}\n")
        return p

    def stop_all(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for _name, p, _ in reversed(self.procs):
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, p, logf in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored SIGTERM; killing it")
            # The group may hold children (nginx workers) even after the
            # leader exited.
            _signal_group(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) did not die")
            logf.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Teardown:
    """Context manager: a temp dir plus a L{Processes}; both cleaned up on
    exit, whatever the cause (SIGTERM and SIGHUP become SystemExit)."""

    def __init__(self, prefix: str, keep: bool = False):
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs = Processes(self.dir / ".pgids")
        self._old = {}
        self._reaper = None

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, _exit_on_signal)
        # A SIGKILLed benchmark runs no cleanup: this watcher then kills the
        # process groups it started (nginx workers are not its children)
        # and removes the temp dir.
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), str(self.dir),
             "1" if self.keep else "0"],
            start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        try:
            self.procs.stop_all()
            if self._reaper is not None:
                self._reaper.kill()
                self._reaper.wait()
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            if self.keep:
                log(f"kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        return False


_REAPER = r"""
import os, shutil, signal, sys, time
watched, workdir, keep = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
while os.getppid() == watched:
    time.sleep(0.5)
try:
    with open(os.path.join(workdir, ".pgids")) as f:
        for line in f:
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ValueError, OSError):
                pass
except OSError:
    pass
if not keep:
    shutil.rmtree(workdir, ignore_errors=True)
"""


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def children_of(pid: int) -> List[int]:
    """Direct children of C{pid} (nginx workers of a master)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def pin(pids: Iterable[int], cpu: int) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})


def affinity(pid: int) -> str:
    cpus = sorted(os.sched_getaffinity(pid))
    return ",".join(map(str, cpus))


def rss_kb(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM (peak) of C{pid}, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- nginx -------------------------------------------------------------------------

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 40000;
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""


def nginx_backend_conf(dir: Path, port: int) -> Path:
    """nginx answering every GET with L{BODY} (200, Content-Length)."""
    body = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY.rstrip()}\\n";
        }}
    }}"""
    return write_nginx(dir, body)


def nginx_proxy_conf(dir: Path, port: int, backend_port: int) -> Path:
    """nginx as a reverse proxy to the backend with upstream keep-alive."""
    body = f"""\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}"""
    return write_nginx(dir, body)


def write_nginx(dir: Path, body: str) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "tmp").mkdir(exist_ok=True)
    conf = dir / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(dir=dir, body=body))
    return conf


def start_nginx(procs: Processes, name: str, nginx: str, conf: Path, cpu: int) -> dict:
    """Start nginx (master + 1 worker), both pinned to C{cpu}; returns
    C{{"master": pid, "workers": [pids]}}."""
    argv = ["taskset", "-c", str(cpu), nginx, "-p", str(conf.parent), "-c", str(conf)]
    p = procs.start(name, argv, conf.parent / "stdout.log")
    workers: List[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited: "
                               + (conf.parent / "error.log").read_text(errors="replace"))
        workers = children_of(p.pid)
        if workers:
            break
        time.sleep(0.05)
    if not workers:
        raise RuntimeError(f"{name}: no worker process")
    return {"master": p.pid, "workers": workers, "popen": p}


# -- the interceptor ---------------------------------------------------------------------


def route_manifest(name: str, host: str, port: int, route: Optional[str] = None,
                   port_name: str = "http", app_protocol: Optional[str] = None) -> str:
    """YAML documents in namespace C{bench}: Service C{name} (clusterIP
    127.0.0.1) whose port C{port_name} is C{port} (with C{appProtocol}
    C{app_protocol} when given, e.g. L{H2C}), its ready EndpointSlice at
    127.0.0.1, and InterceptorRoute C{route} (C{name} by default) sending
    C{host} to it."""
    svc_app = f"      appProtocol: {app_protocol}\n" if app_protocol else ""
    slice_app = f"    appProtocol: {app_protocol}\n" if app_protocol else ""
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: bench
spec:
  clusterIP: 127.0.0.1
  ports:
    - name: {port_name}
      port: {port}
      targetPort: {port}
      protocol: TCP
{svc_app}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: bench
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
endpoints:
  - addresses: ["127.0.0.1"]
    conditions:
      ready: true
ports:
  - name: {port_name}
    port: {port}
    protocol: TCP
{slice_app}---
apiVersion: http.keda.sh/v1beta1
kind: InterceptorRoute
metadata:
  name: {route or name}
  namespace: bench
spec:
  target:
    service: {name}
    portName: {port_name}
  rules:
    - hosts: ["{host}"]
      paths:
        - value: /
  scalingMetric:
    concurrency:
      targetValue: 100
"""


def write_manifests(dir: Path, backend_port: int, routes: int = 200) -> Path:
    """InterceptorRoutes r0..r{routes-1} in namespace C{bench}: r0 answers
    C{bench.local}, the others C{r<i>.bench.local}.  Each route targets its
    own Service C{backend-<i>} (clusterIP 127.0.0.1, port C{http} = the
    nginx backend's port) with a ready EndpointSlice at 127.0.0.1, so every
    route leads to the same nginx backend."""
    dir.mkdir(parents=True, exist_ok=True)
    docs = [route_manifest(f"backend-{i}", BENCH_HOST if i == 0 else f"r{i}.{BENCH_HOST}",
                           backend_port, route=f"r{i}")
            for i in range(routes)]
    path = dir / "bench.yaml"
    path.write_text("---\n".join(docs))
    return dir


def interceptor_source(spec: Optional[str], workdir: Path) -> Optional[Path]:
    """Where to run the interceptor's code from.

    C{None} or C{"worktree"}: this checkout, as it is (the installed one).
    A directory holding C{keda_proxy/}: that copy.  Anything else is a git
    ref of this checkout, exported with C{git archive} (read-only) into
    C{workdir}, e.g. C{HEAD} for the last commit.
    """
    if spec in (None, "", "worktree"):
        return None
    path = Path(spec)
    if (path / "keda_proxy").is_dir():
        return path.resolve()
    dest = workdir / ("src-" + "".join(c if c.isalnum() else "_" for c in spec))
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", spec],
                             capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {spec}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def describe_source(src: Optional[Path], spec: Optional[str]) -> str:
    if src is None:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no", "keda_proxy"],
                               capture_output=True, text=True).stdout.strip()
        return f"working tree {REPO} (HEAD {rev}{', with local changes' if dirty else ''})"
    if Path(spec).is_dir():
        return f"directory {src}"
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", spec],
                         capture_output=True, text=True).stdout.strip()
    return f"git {spec} ({rev}), exported to {src}"


def interceptor_argv(cpu: int, manifests: Path, nofile: Optional[int] = None,
                     twistd_opts: Iterable[str] = ()) -> List[str]:
    argv = ["taskset", "-c", str(cpu)]
    if nofile:
        argv += ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
    return argv + [twistd_path(), "-n", "--pidfile=", *twistd_opts, "keda-interceptor",
                   "--manifests", str(manifests)]


def interceptor_env(proxy_port: int, admin_port: int, src: Optional[Path] = None) -> dict:
    env = dict(os.environ)
    if src is not None:
        # Ahead of the editable install's path: keda_proxy comes from src.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(src)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(
        KEDA_HTTP_PROXY_PORT=str(proxy_port),
        KEDA_HTTP_ADMIN_PORT=str(admin_port),
        OTEL_PROM_EXPORTER_ENABLED="false",
        # quick teardown; the load is over when we stop it
        KEDA_HTTP_SHUTDOWN_DELAY="0s",
        KEDA_HTTP_DRAIN_TIMEOUT="1s",
    )
    return env


def start_interceptor(procs: Processes, workdir: Path, backend_port: int, cpu: int,
                      routes: int = 200, nofile: Optional[int] = None,
                      src: Optional[Path] = None, name: str = "keda-interceptor",
                      twistd_opts: Iterable[str] = (), extra_env: Optional[dict] = None) -> dict:
    """Start the interceptor (from C{src}, see L{interceptor_source}) and
    wait for /readyz."""
    proxy_port, admin_port = free_ports(2)
    manifests = write_manifests(workdir / "manifests", backend_port, routes)
    argv = interceptor_argv(cpu, manifests, nofile, twistd_opts)
    env = interceptor_env(proxy_port, admin_port, src)
    env.update(extra_env or {})
    where = str(src or REPO)
    check_import_source(env, where)
    logname = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    logfile = workdir / f"{logname}.log"
    p = procs.start(name, argv, logfile, env=env, cwd=where)
    wait_ready(p, name, logfile, admin_port, 30)
    return {"pid": p.pid, "popen": p, "proxy_port": proxy_port,
            "admin_port": admin_port, "argv": argv, "log": logfile}


def start_cprofiled(td: "Teardown", backend_port: int, cpu: int, out_path: Path,
                    routes: int, src: Optional[Path] = None, twistd_opts: Iterable[str] = (),
                    extra_env: Optional[dict] = None) -> dict:
    """One more interceptor, as L{start_interceptor}, under twistd's cProfile:
    its stats go to C{out_path} (removed first) when it stops; see
    L{report_cprofile}."""
    if out_path.exists():
        out_path.unlink()
    log(f"starting a cProfile'd keda-interceptor (stats to {out_path})")
    return start_interceptor(td.procs, td.dir, backend_port, cpu, routes=routes, src=src,
                             name="keda-interceptor-cprofile", extra_env=extra_env,
                             twistd_opts=[*twistd_opts, "--profiler=cprofile", "--savestats",
                                          f"--profile={out_path}"])


def report_cprofile(k: dict, out_path: Path, requests: int, rps: float, what: str,
                    top: int = 25, poll_time: bool = False, own: str = "own time") -> None:
    """Stop the interceptor of L{start_cprofiled} C{k}, loaded with
    C{requests} requests at C{rps} req/s (C{what}: how, for the heading),
    and print its calls per request and hot spots: the top C{top} by own
    time and by cumulative time, in % of its busy time (all but the
    reactor's epoll.poll; C{poll_time}: print that as well).  C{own}: how
    the own-time list calls it."""
    import pstats

    k["popen"].send_signal(signal.SIGTERM)
    try:
        k["popen"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        log("the cProfile'd interceptor did not stop; no stats")
        return
    if not out_path.exists():
        log("twistd wrote no profile")
        return
    st = pstats.Stats(str(out_path))
    requests += 1
    rows = st.stats  # {(file, line, fn): (cc, nc, tt, ct, callers)}
    polls = {key for key in rows if key[2] == "<method 'poll' of 'select.epoll' objects>"}
    poll = sum(rows[key][2] for key in polls)
    busy = max(1e-9, st.total_tt - poll)
    print(f"\n## cProfile of keda-interceptor, {what} "
          f"({rps:,.0f} req/s under the profiler; stats in {out_path})")
    print(f"\n{st.total_calls:,} function calls for {requests:,} requests: "
          f"{st.total_calls / requests:,.0f} calls per request; {busy:.2f} s busy"
          + (f" + {poll:.2f} s in epoll.poll (incl. idle before/after load)"
             if poll_time else ""))

    def name(key):
        file, line, fn = key
        if "/keda_proxy/" in file:
            file = "keda_proxy/" + file.split("/keda_proxy/", 1)[1]
        elif "site-packages/" in file:
            file = file.split("site-packages/", 1)[1]
        return f"{fn} ({file}:{line})" if line else fn

    print(f"\nTop {top} by {own}, % of busy time, calls per request:")
    by_tt = sorted(rows.items(), key=lambda kv: -kv[1][2])
    for key, (_cc, nc, tt, _ct, _) in [kv for kv in by_tt if kv[0] not in polls][:top]:
        print(f"  {100 * tt / busy:5.1f}%  {nc / requests:5.1f}/req  {name(key)}")
    print(f"\nTop {top} by cumulative time, under the reactor's dispatch:")
    shown = 0
    for key, (_cc, nc, _tt, ct, _) in sorted(rows.items(), key=lambda kv: -kv[1][3]):
        if ct >= busy * 0.9 or key in polls:
            continue  # the reactor loop itself
        print(f"  {100 * ct / busy:5.1f}%  {nc / requests:5.1f}/req  {name(key)}")
        shown += 1
        if shown >= top:
            break


def check_import_source(env: dict, where: str) -> None:
    """Refuse to start an interceptor whose keda_proxy would not come from
    C{where} (a wrong PYTHONPATH would measure the wrong code)."""
    found = subprocess.run([sys.executable, "-c", "import keda_proxy; print(keda_proxy.__file__)"],
                           env=env, cwd=where, capture_output=True, text=True).stdout.strip()
    if not found.startswith(where):
        raise RuntimeError(f"keda_proxy would be imported from {found!r}, not {where}")


def wait_ready(p: subprocess.Popen, name: str, logfile: Path, admin_port: int,
               timeout: float, also=None) -> None:
    """Wait until the interceptor's /readyz answers 200 (and C{also()}, if
    given, is true); raise with its log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited:\n"
                               + logfile.read_text(errors="replace")[-3000:])
        try:
            if http_get(f"http://127.0.0.1:{admin_port}/readyz", timeout=2)[0] == 200 \
                    and (also is None or also()):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s; see {logfile}")
        time.sleep(0.1)


def run_main(main) -> None:
    """A benchmark's entry point: exit with C{main()}'s status; on Ctrl-C,
    everything started has been stopped by then."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)


def wait_listening(port: int, proc: subprocess.Popen, logfile: Path, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{logfile.stem} exited:\n" + logfile.read_text(errors="replace"))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {port} after {timeout} s") from None
            time.sleep(0.05)


def http_get(url: str, host: Optional[str] = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run_client(argv: List[str], timeout: float, meter: Optional["CpuMeter"] = None,
               group: str = "client"):
    """Run a load client (wrk, h2load) in its own process group, killed if
    this script is interrupted or C{timeout} passes; counted in C{meter}'s
    C{group} when given.  Returns its exit status, its output (stdout and
    stderr) and the CPU seconds it used."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    if meter is not None:
        meter.add(group, p.pid)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        _signal_group(p.pid, 9)
        p.wait()
        raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return p.returncode, out.decode(errors="replace"), cpu_s


def check_body(url: str, host: Optional[str] = None) -> None:
    status, body = http_get(url, host)
    if status != 200 or body != BODY.encode():
        raise RuntimeError(f"{url} (Host {host}) answered {status} {body[:80]!r}")


# -- CPU accounting ------------------------------------------------------------------


def proc_ticks(pid: int) -> int:
    """utime + stime of C{pid} in clock ticks (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def all_ticks() -> Dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            t = proc_ticks(int(entry))
            if t:
                out[int(entry)] = t
    return out


_WAKEUP_PROBE = r"""
import os, socket, sys, time
a, b = socket.socketpair()
cpu_a, cpu_b, n, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pid = os.fork()
if pid == 0:
    os.sched_setaffinity(0, {cpu_b})
    a.close()
    while True:
        d = b.recv(1)
        if not d or d == b"q":
            os._exit(0)
        b.send(d)
os.sched_setaffinity(0, {cpu_a})
b.close()
out = []
for _ in range(n):
    time.sleep(gap)
    t = time.perf_counter_ns()
    a.send(b"x")
    a.recv(1)
    out.append((time.perf_counter_ns() - t) / 1000)
a.send(b"q")
os.waitpid(pid, 0)
out.sort()
print(out[n // 2], out[int(n * 0.99)])
"""


def wakeup_probe(cpu_a: int, cpu_b: int, n: int = 400, gap: float = 0.002):
    """Round trip (p50, p99 in microseconds) of one byte over a socketpair
    between a process on C{cpu_a} and one on C{cpu_b}, each ping sent after
    C{gap} s of sleep, so both cores have gone idle: what every hop of a
    1-connection request costs in wake-ups alone."""
    try:
        p = subprocess.run([sys.executable, "-c", _WAKEUP_PROBE, str(cpu_a), str(cpu_b),
                            str(n), str(gap)], capture_output=True, text=True, timeout=30)
        p50, p99 = map(float, p.stdout.split())
        return p50, p99
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def steal_ticks() -> int:
    """Ticks the hypervisor ran something else while our vCPUs wanted to run
    (all cores added up)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class CpuMeter:
    """CPU used during an interval, in % of one core: by named groups of
    our processes (the server under test, the backend, wrk), and by every
    other process on the machine ("other": background load, which makes the
    results lower bounds).  Processes that start and exit inside the
    interval are missed, so "other" is approximate."""

    def __init__(self, groups: Dict[str, Iterable[int]], ours: Iterable[int] = ()):
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.ours = set(ours) | {p for pids in self.groups.values() for p in pids}
        self.pct: Dict[str, float] = {}

    def add(self, group: str, pid: int) -> None:
        """Count C{pid} (started inside the interval) in C{group}."""
        self.groups.setdefault(group, []).append(pid)
        self.ours.add(pid)

    def __enter__(self):
        self.t0 = time.monotonic()
        self.a = all_ticks()
        self.steal0 = steal_ticks()
        return self

    def __exit__(self, *exc):
        dt = time.monotonic() - self.t0
        b = all_ticks()
        me = os.getpid()

        def used(pid):
            return max(0, b.get(pid, 0) - self.a.get(pid, 0))

        for name, pids in self.groups.items():
            self.pct[name] = 100.0 * sum(used(p) for p in pids) / CLK_TCK / dt
        self.pct["steal"] = 100.0 * (steal_ticks() - self.steal0) / CLK_TCK / dt
        others = {p: used(p) for p in b if p not in self.ours and p != me}
        self.pct["other"] = 100.0 * sum(others.values()) / CLK_TCK / dt
        self.top_others = [(_comm(p), p, 100.0 * t / CLK_TCK / dt)
                           for p, t in sorted(others.items(), key=lambda x: -x[1])[:3] if t]
        if os.environ.get("BENCH_DEBUG"):
            log(f"other CPU: {self.top_others}")
        return False


def start_fake_api(td: "Teardown", backend_port: int, routes: int,
                   cpu: Optional[int] = None) -> str:
    """The suite's fake Kubernetes API server (tests/fakeapi.py) in a child
    process, holding the same objects as L{write_manifests}; returns a
    kubeconfig for it."""
    import json
    import re

    from tests import fakeapi
    from tests.kubeconfig import write_kubeconfig

    log_path = td.dir / "fake-api.log"
    argv = [sys.executable, "-m", "tests.fakeapi", "--bookmark-interval", "30"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    # it runs until its stdin closes: a pipe, closed when this script ends
    p = td.procs.start("fake-api", argv, log_path, cwd=REPO, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not re.search(r"^PORT \d+", log_path.read_text(), re.M):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("fake API server did not start:\n" + log_path.read_text())
        time.sleep(0.05)
    port = int(re.search(r"^PORT (\d+)", log_path.read_text(), re.M).group(1))
    objs = []
    for i in range(routes):
        name = f"backend-{i}"
        host = BENCH_HOST if i == 0 else f"r{i}.{BENCH_HOST}"
        objs.append(fakeapi.service(name, "bench", ports=(("http", backend_port),),
                                    cluster_ip="127.0.0.1"))
        objs.append(fakeapi.endpoint_slice(name, "bench", service=name, ips=["127.0.0.1"],
                                           port=backend_port))
        objs.append(fakeapi.interceptor_route(f"r{i}", "bench", service=name,
                                              port=backend_port, hosts=[host]))
    for start in range(0, len(objs), 2000):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/fake/objects", method="POST",
                                     data=json.dumps(objs[start:start + 2000]).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
    return write_kubeconfig(td.dir / "kubeconfig", f"http://127.0.0.1:{port}")


# -- Go references -------------------------------------------------------------------


def build_go(source: Path, workdir: Path, install: bool, without: str) -> str:
    """Build a standard-library-only Go program (no modules) into
    C{workdir} with Debian's golang-go (L{ensure_tools}; C{without} says
    how to run the benchmark without Go); return the binary's path."""
    go = ensure_tools(["go"], install, without)["go"]
    out = workdir / source.parent.name
    env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="0",
               GOCACHE=str(workdir / "gocache"), GOPATH=str(workdir / "gopath"))
    p = subprocess.run([go, "build", "-o", str(out), str(source)], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"go build failed:\n{p.stdout}{p.stderr}")
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    log(f"built the Go reference {source.parent.name} ({version})")
    return str(out)
