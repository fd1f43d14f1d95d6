"""
Request latency while the manifest source reloads 1,000 routes.

Run: ``.venv/bin/python benchmarks/bench_manifest_reload.py``

Generates a folder of manifests -- ``bench.yaml`` with 1,000
InterceptorRoutes, each with its Service and EndpointSlice (about 0.8 MB of
YAML, from L{benchlib.write_manifests}), plus a small ``unrelated.yaml`` --
starts a backend (this file with ``--serve``: a keep-alive HTTP/1.1 server
on asyncio) and ``twistd keda-interceptor --manifests DIR`` pinned to its
own core, and sends steady keep-alive GETs for route 0 through the proxy
from two client threads (one every 4 ms each).  Then, in three phases:

  - ``idle``: no file changes;
  - ``unrelated``: ``unrelated.yaml`` is edited every 2 s;
  - ``big``: one route in ``bench.yaml`` is edited every 2 s (the whole
    file is parsed again and the routes are applied again);

it reports the request count, the reloads the interceptor logged, and the
p50, p99 and maximum request latency of each phase.  The target is a
maximum under 50 ms in every phase (``--check`` exits 1 otherwise).  All
traffic is on 127.0.0.1; the whole run takes about 30 s.

``--interceptor REF`` runs a git ref (or a directory holding keda_proxy/)
instead of the working tree, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

TARGET_MAX_MS = 50.0
PHASES = ("idle", "unrelated", "big")

_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(bl.BODY), bl.BODY.encode()))


# -- the backend (this file with --serve) --------------------------------------


def serve(port: int) -> None:
    """Answer every request head with L{bl.BODY}, keeping connections open."""

    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the client -------------------------------------------------------------------


class Client(threading.Thread):
    """Keep-alive GETs every C{gap} seconds; records (start, latency) pairs."""

    def __init__(self, port: int, gap: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.gap, self.stop = port, gap, stop
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.request = (f"GET / HTTP/1.1\r\nHost: {bl.BENCH_HOST}\r\n\r\n").encode()

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def run(self) -> None:
        sock, buf = self.connect(), b""
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                sock.sendall(self.request)
                buf = self._read_response(sock, buf)
            except (OSError, ValueError):
                self.errors += 1
                sock.close()
                sock, buf = self.connect(), b""
                continue
            self.samples.append((t0, time.monotonic() - t0))
            next_at = max(next_at + self.gap, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
        sock.close()

    @staticmethod
    def _read_response(sock, buf: bytes) -> bytes:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise ValueError(lines[0].decode(errors="replace"))
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed")
            rest += chunk
        return rest[length:]


# -- the run ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def reloads_logged(logfile: Path) -> int:
    text = logfile.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "loaded " in line and " file(s)" in line)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000, help="InterceptorRoutes (1000)")
    ap.add_argument("--phase", type=float, default=8.0, help="seconds per phase (8)")
    ap.add_argument("--every", type=float, default=2.0,
                    help="seconds between file edits in a phase (2)")
    ap.add_argument("--gap-ms", type=float, default=4.0,
                    help="pause between one client's requests (4 ms)")
    ap.add_argument("--clients", type=int, default=2, help="client threads (2)")
    ap.add_argument("--interceptor", metavar="SRC", default=None,
                    help="git ref or directory to run instead of the working tree")
    ap.add_argument("--server-cpu", type=int, default=0, help="core of the interceptor (0)")
    ap.add_argument("--load-cpu", type=int, default=None,
                    help="core of the backend and this client (1, or 0 on one core)")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if a phase's maximum exceeds {TARGET_MAX_MS:g} ms")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (manifests, logs)")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    ncpu = os.cpu_count() or 1
    if args.load_cpu is None:
        args.load_cpu = 1 if ncpu > 1 else 0
    bl.check_cores(ap, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    with bl.Teardown("keda-bench-reload-", keep=args.keep) as td:
        os.sched_setaffinity(0, {args.load_cpu})
        (backend_port,) = bl.free_ports(1)
        backend_log = td.dir / "backend.log"
        backend = td.procs.start(
            "backend", ["taskset", "-c", str(args.load_cpu), sys.executable,
                        str(Path(__file__).resolve()), "--serve", str(backend_port)],
            backend_log)
        bl.wait_listening(backend_port, backend, backend_log)

        folder = td.dir / "manifests"
        folder.mkdir()
        unrelated = folder / "unrelated.yaml"
        unrelated.write_text(unrelated_yaml(0))
        src = bl.interceptor_source(args.interceptor, td.dir)
        where = bl.describe_source(src, args.interceptor)
        bl.log(f"starting the interceptor with {args.routes} routes ({where})")
        started = time.monotonic()
        k = bl.start_interceptor(td.procs, td.dir, backend_port, args.server_cpu,
                                 routes=args.routes, src=src)
        startup = time.monotonic() - started
        big = folder / "bench.yaml"
        size = big.stat().st_size
        bl.check_body(f"http://127.0.0.1:{k['proxy_port']}/", bl.BENCH_HOST)

        stop = threading.Event()
        clients = [Client(k["proxy_port"], args.gap_ms / 1000, stop)
                   for _ in range(args.clients)]
        for c in clients:
            c.start()
        windows = {}
        reloads = {}
        text = big.read_text()
        try:
            time.sleep(1.0)  # connections established, warm
            for phase in PHASES:
                bl.log(f"phase {phase}: {args.phase:g} s")
                before = reloads_logged(k["log"])
                t0 = time.monotonic()
                edits = 0
                while time.monotonic() - t0 < args.phase:
                    if phase != "idle" and time.monotonic() - t0 >= edits * args.every:
                        edits += 1
                        if phase == "unrelated":
                            unrelated.write_text(unrelated_yaml(edits))
                        else:
                            big.write_text(edit_last_route(text, edits))
                    time.sleep(0.05)
                # let the last reload finish inside the window
                time.sleep(1.5 if phase != "idle" else 0)
                windows[phase] = (t0, time.monotonic())
                reloads[phase] = reloads_logged(k["log"]) - before
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=35)
        if k["popen"].poll() is not None:
            raise RuntimeError("the interceptor exited:\n"
                               + k["log"].read_text(errors="replace")[-3000:])

        samples = sorted(s for c in clients for s in c.samples)
        errors = sum(c.errors for c in clients)
        rows = []
        failed = errors > 0
        for phase in PHASES:
            lo, hi = windows[phase]
            lat = [d * 1000 for t, d in samples if lo <= t < hi]
            worst = max(lat) if lat else float("nan")
            failed = failed or not worst <= TARGET_MAX_MS
            rows.append((phase, len(lat), reloads[phase], percentile(lat, 50),
                         percentile(lat, 99), worst))

        print()
        print("## manifest reload: request latency while the files change")
        print()
        print("- command: " + " ".join([Path(sys.executable).name,
                                        "benchmarks/bench_manifest_reload.py", *sys.argv[1:]]))
        print(f"- interceptor: {where}")
        print(f"- manifests: {args.routes} InterceptorRoutes + Services + EndpointSlices "
              f"in bench.yaml ({size / 1e6:.2f} MB), plus unrelated.yaml; "
              f"startup to /readyz {startup:.1f} s")
        print(f"- pinned: interceptor core {args.server_cpu}, backend and client core "
              f"{args.load_cpu}; {args.clients} keep-alive client(s), one GET every "
              f"{args.gap_ms:g} ms each; {args.phase:g} s per phase, an edit every "
              f"{args.every:g} s")
        print(f"- errors: {errors}")
        print()
        print("| phase | requests | reloads | p50 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for phase, n, r, p50, p99, worst in rows:
            print(f"| {phase} | {n} | {r} | {p50:.2f} | {p99:.2f} | {worst:.1f} |")
        print()
        print(f"- target: max <= {TARGET_MAX_MS:g} ms in every phase: "
              f"{'FAIL' if failed else 'PASS'}")
        sys.stdout.flush()
        return 1 if args.check and failed else 0


def edit_last_route(text: str, n: int) -> str:
    """C{text} with the last route's target value changed: one
    InterceptorRoute differs, so the routes are applied again."""
    head, sep, tail = text.rpartition("targetValue: 100\n")
    assert sep, "no targetValue in the generated manifests"
    return f"{head}targetValue: {100 + n}\n{tail}"


def unrelated_yaml(n: int) -> str:
    """Objects the proxy does not read, edited between reloads."""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: unrelated
  namespace: bench
  annotations: {{edit: "{n}"}}
spec:
  replicas: 1
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: unrelated, namespace: bench}}
data: {{edit: "{n}"}}
"""


if __name__ == "__main__":
    bl.run_main(main)
