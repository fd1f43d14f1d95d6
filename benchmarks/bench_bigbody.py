"""
1 GiB up and 1 GiB down through keda-interceptor: both bodies must stream.

Starts a backend (this file with --serve: hashes uploads as they arrive,
generates downloads) and ``twistd keda-interceptor`` on a generated
manifest, then sends a 1 GiB upload and fetches a 1 GiB download through
the proxy over loopback, checking each sha256 end to end and sampling the
interceptor's RSS (VmRSS) every 50 ms.  The target is growth under 50 MB.

    .venv/bin/python benchmarks/bench_bigbody.py [--size-mb 1024]
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
BLOCK = bytes(range(256)) * 1024  # 256 KiB


def serve(port):
    """The backend: /upload hashes the body, /download?size=N streams N bytes."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    class Hashing(server.Request):
        def gotLength(self, length):
            self.content = None
            self.sha, self.size = hashlib.sha256(), 0

        def handleContentChunk(self, data):
            self.sha.update(data)
            self.size += len(data)

        def requestReceived(self, command, path, version):
            self.method, self.uri, self.clientproto = command, path, version
            self.path, self.args = path.split(b"?")[0], {}
            self.process()

    class Root(resource.Resource):
        isLeaf = True

        def render(self, request):
            if request.path == b"/upload":
                return json.dumps({"sha256": request.sha.hexdigest(),
                                   "size": request.size}).encode()
            size = int(request.uri.split(b"size=")[1])
            request.setHeader(b"content-length", b"%d" % size)
            Streamer(request, size)
            return server.NOT_DONE_YET

    class Streamer:
        def __init__(self, request, size):
            self.request, self.left, self.paused = request, size, False
            request.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            while not self.paused and self.left > 0:
                n = min(len(BLOCK), self.left)
                self.request.write(BLOCK[:n])
                self.left -= n
            if self.left == 0:
                self.left = -1
                self.request.unregisterProducer()
                self.request.finish()

        def stopProducing(self):
            self.left = -1

    site = server.Site(Root())
    site.requestFactory = Hashing
    site.log = lambda r: None
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: default}}
spec: {{clusterIP: 127.0.0.1, ports: [{{name: http, port: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big, namespace: default, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {port}}}]
---
apiVersion: http.keda.sh/v1beta1
kind: InterceptorRoute
metadata: {{name: big, namespace: default}}
spec:
  target: {{service: big, portName: http}}
  rules: [{{hosts: [big.local]}}]
"""


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.05)


def wait_ready(url, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


def upload(proxy_port, size):
    sha = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", proxy_port)) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: big.local\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            chunk = BLOCK[:min(len(BLOCK), left)]
            sha.update(chunk)
            s.sendall(chunk)
            left -= len(chunk)
        data = b""
        while not data.endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return body["sha256"] == sha.hexdigest() and body["size"] == size


def download(proxy_port, size):
    sha, got = hashlib.sha256(), 0
    with socket.create_connection(("127.0.0.1", proxy_port)) as s:
        s.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: big.local\r\n\r\n" % size)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        _, rest = buf.split(b"\r\n\r\n", 1)
        sha.update(rest)
        got = len(rest)
        while got < size:
            data = s.recv(1 << 20)
            if not data:
                break
            sha.update(data)
            got += len(data)
    expected = hashlib.sha256()
    left = size
    while left:
        n = min(len(BLOCK), left)
        expected.update(BLOCK[:n])
        left -= n
    return got == size and sha.hexdigest() == expected.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    size = args.size_mb * 1024 * 1024
    bport, pport, aport = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="keda-bigbody-")
    with open(os.path.join(tmp, "m.yaml"), "w") as f:
        f.write(MANIFEST.format(port=bport))
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve", str(bport)]))
        env = dict(os.environ, KEDA_HTTP_PROXY_PORT=str(pport), KEDA_HTTP_ADMIN_PORT=str(aport),
                   OTEL_PROM_EXPORTER_ENABLED="false", KEDA_HTTP_SHUTDOWN_DELAY="0s")
        ic = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile",
                               os.path.join(tmp, "interceptor.log"), "keda-interceptor",
                               "--manifests", os.path.join(tmp, "m.yaml")], env=env, cwd=tmp)
        procs.append(ic)
        wait_ready(f"http://127.0.0.1:{aport}/readyz")
        base = rss_mb(ic.pid)
        rows = []
        for name, fn in (("upload", upload), ("download", download)):
            sampler = Sampler(ic.pid)
            sampler.start()
            t0 = time.monotonic()
            ok = fn(pport, size)
            dt = time.monotonic() - t0
            sampler.running = False
            sampler.join()
            rows.append((name, ok, dt, size / dt / 1e6, sampler.peak, sampler.peak - base))
        print(f"\n## {args.size_mb} MiB through keda-interceptor (loopback, unpinned)\n")
        print(f"interceptor RSS at start: {base:.1f} MB\n")
        print("| direction | sha256 intact | seconds | MB/s | peak RSS MB | growth MB | < 50 MB |")
        print("|---|---|---:|---:|---:|---:|---|")
        failed = False
        for name, ok, dt, rate, peak, growth in rows:
            verdict = "PASS" if ok and growth < 50 else "FAIL"
            failed |= verdict == "FAIL"
            print(f"| {name} | {'yes' if ok else 'NO'} | {dt:.1f} | {rate:.0f} | "
                  f"{peak:.1f} | {growth:+.1f} | {verdict} |")
        sys.exit(1 if failed else 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
