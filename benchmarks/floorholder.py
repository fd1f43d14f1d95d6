"""
A floor for ``bench_cold_start.py`` (its ``floor:N`` scenarios): the least a
process can do to hold requests and release them when an EndpointSlice
watch event says a pod is ready, with one ``epoll`` loop, raw sockets and
almost no Python per request.

It is not a proxy: it parses nothing it does not need, forwards a client's
request bytes as they came, keeps ``--conns`` keep-alive connections to
the pod and gives each freed one the next held request, oldest first.  A
response is whole when its Content-Length is in (the pod is the bench's
nginx), and requests and responses are small enough for one send each.
What it measures is the harness and the kernel on this machine: the fake
API server's watch event, the pod's dials, and the two loopback sends and
one receive each released request costs.  Compare the
interceptor with it in the same run, as with the Go reference.

The admin address answers ``/readyz`` (200 once the watch is open) and
``/queue`` (``{"NS/SERVICE": {"Concurrency": N, "RPS": 0}}``, N the
requests not yet answered) from a thread, as the interceptor's does; the
thread is idle during a release.

Run by the bench: ``floorholder.py --listen HOST:PORT --admin HOST:PORT
--api URL --namespace NS --service NAME [--port-name http] [--conns 16]``.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import select
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

_CL = re.compile(rb"\r\n[Cc]ontent-[Ll]ength:[ \t]*(\d+)")
IN, OUT = select.EPOLLIN, select.EPOLLOUT


def hostport(text: str):
    host, _, port = text.rpartition(":")
    return host, int(port)


class Watch:
    """An EndpointSlice watch over a raw socket: chunked JSON lines in,
    the first ready pod's C{(ip, port)} out."""

    def __init__(self, api: str, namespace: str, service: str, port_name: str):
        url = urlsplit(api)
        path = (f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                f"?watch=true&labelSelector={quote('kubernetes.io/service-name=' + service)}")
        self.sock = socket.create_connection((url.hostname, url.port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.port_name = port_name
        self.raw = b""
        self.body = b""
        self.head_done = False

    def feed(self, data: bytes):
        """The ready pod the events so far name, or None."""
        self.raw += data
        if not self.head_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.raw, self.head_done = self.raw[end + 4:], True
        while True:  # chunked transfer coding
            eol = self.raw.find(b"\r\n")
            if eol < 0:
                break
            size = int(self.raw[:eol], 16)
            if len(self.raw) < eol + 2 + size + 2:
                break
            self.body += self.raw[eol + 2:eol + 2 + size]
            self.raw = self.raw[eol + 2 + size + 2:]
        pod = None
        *lines, self.body = self.body.split(b"\n")
        for line in lines:
            if line.strip():
                pod = self._ready(json.loads(line)) or pod
        return pod

    def _ready(self, event: dict):
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return None
        obj = event["object"]
        ports = [p["port"] for p in obj.get("ports") or () if p.get("name") == self.port_name]
        for ep in obj.get("endpoints") or ():
            if ports and (ep.get("conditions") or {}).get("ready") and ep.get("addresses"):
                return ep["addresses"][0], ports[0]
        return None


class Floor:
    def __init__(self, args):
        self.ep = select.epoll()
        self.listener = socket.create_server(hostport(args.listen), backlog=4096)
        self.listener.setblocking(False)
        self.ep.register(self.listener.fileno(), IN)
        self.watch = Watch(args.api, args.namespace, args.service, args.port_name)
        self.ep.register(self.watch.sock.fileno(), IN)
        self.conns = args.conns
        self.pod = None
        self.clients = {}  # fd -> [socket, request bytes so far]
        self.held = deque()  # client fds with a whole request, oldest first
        #: fd -> [socket, client fd or None, response so far, connected]
        self.upstreams = {}
        self.pending = 0  # requests read and not yet answered

    def run(self) -> None:
        poll = self.ep.poll
        while True:
            for fd, ev in poll():
                if fd in self.upstreams:
                    self.upstream_event(fd, ev)
                elif fd in self.clients:
                    self.client_readable(fd)
                elif fd == self.listener.fileno():
                    self.accept()
                else:
                    self.watch_readable()

    def accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.clients[s.fileno()] = [s, b""]
            self.ep.register(s.fileno(), IN)

    def client_readable(self, fd: int) -> None:
        entry = self.clients[fd]
        try:
            data = entry[0].recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.ep.unregister(fd)
            entry[0].close()
            del self.clients[fd]
            return
        entry[1] += data
        if b"\r\n\r\n" in entry[1]:
            self.pending += 1
            self.held.append(fd)
            for up, up_entry in self.upstreams.items():
                if up_entry[3] and up_entry[1] is None and self.held:
                    self.send_next(up)

    def watch_readable(self) -> None:
        data = self.watch.sock.recv(65536)
        if not data:
            raise SystemExit("floorholder: the watch ended")
        pod = self.watch.feed(data)
        if pod is not None and self.pod is None:
            self.pod = pod
            for _ in range(self.conns):
                s = socket.socket()
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if s.connect_ex(pod) not in (0, errno.EINPROGRESS):
                    raise SystemExit(f"floorholder: cannot connect to {pod}")
                self.upstreams[s.fileno()] = [s, None, b"", False]
                self.ep.register(s.fileno(), IN | OUT)

    def send_next(self, up: int) -> None:
        """Give pod connection C{up} the oldest held request whose client is
        still there, if any."""
        entry = self.upstreams[up]
        while self.held:
            fd = self.held.popleft()
            client = self.clients.get(fd)
            if client is None:  # gone while held
                self.pending -= 1
                continue
            entry[1], entry[2] = fd, b""
            entry[0].send(client[1])
            client[1] = b""
            return

    def upstream_event(self, up: int, ev: int) -> None:
        entry = self.upstreams[up]
        if ev & OUT:  # connected
            entry[3] = True
            self.ep.modify(up, IN)
            if self.held:
                self.send_next(up)
            if not ev & IN:
                return
        data = entry[0].recv(65536)
        if not data:
            raise SystemExit("floorholder: the pod closed a connection")
        entry[2] += data
        head_end = entry[2].find(b"\r\n\r\n")
        if head_end < 0:
            return
        m = _CL.search(entry[2], 0, head_end + 2)
        if len(entry[2]) < head_end + 4 + (int(m.group(1)) if m else 0):
            return
        client = self.clients.get(entry[1])
        if client is not None:
            client[0].send(entry[2])
        self.pending -= 1
        entry[1] = None
        if self.held:
            self.send_next(up)


def admin(address, floor: Floor, key: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/readyz":
                body = b"OK"
            elif self.path == "/queue":
                body = json.dumps({key: {"Concurrency": floor.pending, "RPS": 0}}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(address, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--port-name", default="http")
    ap.add_argument("--conns", type=int, default=16,
                    help="keep-alive connections to the pod (16, the interceptor's batch)")
    args = ap.parse_args()
    floor = Floor(args)
    admin(hostport(args.admin), floor, f"{args.namespace}/{args.service}")
    floor.run()


if __name__ == "__main__":
    main()
