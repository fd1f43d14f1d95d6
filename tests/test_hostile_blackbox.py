"""
Black-box hostile probes of the installed ``twistd keda-interceptor``.

One real interceptor process serves several routes, each pointing at its
own scripted upstream: a small threaded TCP server on 127.0.0.1 that answers
each request as its path says (smuggles a second response, sends a body
after a HEAD, a bad framing, an unasked-for 101, drops a reused connection
without a word, ...) and records everything it received.  Clients are raw
sockets, so nothing between the test and the proxy repairs or hides what
the proxy sends.  Every probe fails if the protection it probes is removed
(see docs/operations.md, "Bad input" and "Security notes").

A trickled request body is not probed here: its 30 s grace has no setting
to shorten it, and tests/test_slow_bodies.py covers it on a fake clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests import netsupport
from tests.builders import route_yaml
from tests.netsupport import free_port

TWISTD = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "keda-interceptor"]

#: every route: Host name -> route, Service and upstream name
ROUTES = ("stolen", "sloppy", "framing", "upgrade", "replay", "strict")


def host(name: str) -> str:
    return f"{name}.test"


def token() -> str:
    return uuid.uuid4().hex[:12]


# -- HTTP/1.1 on raw sockets ---------------------------------------------------

class Peer:
    """A socket with a read buffer that keeps every byte it ever read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.received = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        self.received += data
        return True

    def read_until(self, marker: bytes) -> Optional[bytes]:
        while marker not in self.buf:
            if not self._fill():
                return None
        head, self.buf = self.buf.split(marker, 1)
        return head

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise AssertionError(f"connection ended {n - len(self.buf)} bytes short")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def parse_head(head: bytes):
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return lines[0], fields


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes


class Client(Peer):
    """A client connection to the proxy (or the admin port)."""

    def __init__(self, port: int, timeout: float = 5.0):
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=timeout))

    def response(self, method: str = "GET") -> Response:
        head = self.read_until(b"\r\n\r\n")
        assert head is not None, f"no response head, got {self.received!r}"
        line, fields = parse_head(head)
        status = int(line.split(b" ")[1])
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self.read_until(b"\r\n"):
                        pass  # trailers
                    break
                body += self.read_exactly(size)
                self.read_exactly(2)
        elif "content-length" in fields:
            body = self.read_exactly(int(fields["content-length"]))
        else:
            body = self.read_to_eof()
        return Response(status, fields, body)


def request(port: int, raw: bytes, method: str = "GET", timeout: float = 5.0):
    """Send one raw request on a new connection; (response, client)."""
    c = Client(port, timeout)
    c.send(raw)
    return c.response(method), c


# -- scripted upstreams --------------------------------------------------------

@dataclass
class Seen:
    conn: int  # which upstream connection (0, 1, 2, ... in accept order)
    index: int  # which request on that connection (0 = the first: a fresh connection)
    method: str
    target: str
    body: bytes


def ok(method: str, target: str) -> bytes:
    body = f"ok:{method} {target}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


KEEP, CLOSE = "keep", "close"


def script_poison(up, sock, seen):
    """A bodiless response with a whole second response smuggled behind it,
    in one write; the connection stays open as if all were well."""
    status = seen.target.split("/")[2]
    first = {"204": b"HTTP/1.1 204 No Content\r\n\r\n",
             "304": b"HTTP/1.1 304 Not Modified\r\n\r\n",
             "200": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}[status]
    sock.sendall(first + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN")
    return KEEP


def script_idle_poison(up, sock, seen):
    """A clean response; then, once the test says its client has it (the
    connection idle in the proxy's pool), a whole response nobody asked for."""
    sock.sendall(ok(seen.method, seen.target))
    up.event(seen.target.split("/")[2]).wait(2)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN")
    return KEEP


def script_sloppy_head(up, sock, seen):
    """A HEAD answered with Content-Length: 10, then the 10 bytes anyway: as
    soon as the POST that follows reaches this upstream, or 50 ms later."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    up.event(seen.target.split("/")[2]).wait(0.05)
    try:
        sock.sendall(b"SLOPPYBODY")
    except OSError:
        pass  # the proxy had already closed this connection: the right thing
    return KEEP


def script_sloppy_post(up, sock, seen):
    up.event(seen.target.split("/")[2]).set()
    body = b"posted:" + seen.body
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return KEEP


def script_xchunked(up, sock, seen):
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n")
    return KEEP  # and never closes: reading "until close" would hang


def script_bare_lf(up, sock, seen):
    sock.sendall(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi")
    return KEEP


def script_unasked_101(up, sock, seen):
    """Switch protocols nobody asked for, then echo whatever comes, raw."""
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                 b"Upgrade: evil\r\n\r\nRAWTUNNEL-HELLO")
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return CLOSE
        if not data:
            return CLOSE
        with up.lock:
            up.tunnelled += data
        try:
            sock.sendall(b"RAW:" + data)
        except OSError:
            return CLOSE


def script_drop_once(up, sock, seen):
    """The first time a token is seen, close right after reading the
    request, before any byte of a response; answer it any later time."""
    tok = seen.target.split("/")[2]
    with up.lock:
        first = tok not in up.dropped
        up.dropped.add(tok)
    if first:
        return CLOSE
    sock.sendall(ok(seen.method, seen.target))
    return KEEP


SCRIPTS = {
    "poison": script_poison,
    "idle-poison": script_idle_poison,
    "sloppy-head": script_sloppy_head,
    "sloppy-post": script_sloppy_post,
    "xchunked": script_xchunked,
    "bare-lf": script_bare_lf,
    "upgrade": script_unasked_101,
    "drop": script_drop_once,
}


class UpstreamHandler(socketserver.BaseRequestHandler):
    def handle(self):
        up: Upstream = self.server
        sock = self.request
        sock.settimeout(15)  # a stuck handler thread ends on its own
        conn = up.new_connection()
        peer = Peer(sock)
        index = 0
        try:
            while True:
                head = peer.read_until(b"\r\n\r\n")
                if head is None:
                    return
                line, fields = parse_head(head)
                method, target, _ = line.decode("latin-1").split(" ", 2)
                body = peer.read_exactly(int(fields.get("content-length", "0")))
                seen = Seen(conn, index, method, target, body)
                with up.lock:
                    up.seen.append(seen)
                script = SCRIPTS.get(target.split("/")[1])
                if script is None:
                    sock.sendall(ok(method, target))
                elif script(up, sock, seen) == CLOSE:
                    return
                index += 1
        except (OSError, AssertionError):
            return
        finally:
            with up.lock:
                up.closed.add(conn)


class Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.port = self.server_address[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.seen: List[Seen] = []
        self.tunnelled = b""
        self.dropped: set = set()
        self.closed: set = set()  # connections that ended
        self.events: Dict[str, threading.Event] = {}

    def new_connection(self) -> int:
        with self.lock:
            self.connections += 1
            return self.connections - 1

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(name, threading.Event())

    def requests(self, needle: str = "") -> List[Seen]:
        with self.lock:
            return [s for s in self.seen if needle in s.target]


# -- the interceptor -------------------------------------------------------

def manifests(ports: Dict[str, int]) -> str:
    return "---\n".join(route_yaml(port, host(name), name, service=name)
                         for name, port in ports.items())


def eventually(check, timeout=10.0, what="condition"):
    return netsupport.eventually(check, timeout, what, step=0.02,
                                 retry_on=(OSError, AssertionError, ValueError))


def poll(check, timeout: float) -> bool:
    """Whether C{check()} came true within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def admin_get(port: int, path: str) -> Response:
    r, c = request(port, b"GET %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
                   % path.encode(), timeout=2)
    c.close()
    return r


@dataclass
class Rig:
    proc: subprocess.Popen
    proxy: int
    admin: int
    log: Path
    upstreams: Dict[str, Upstream] = field(default_factory=dict)

    def get(self, route: str, path: str, extra: bytes = b"", timeout=5.0):
        r, c = request(self.proxy, b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n"
                       % (path.encode(), host(route).encode(), extra), timeout=timeout)
        c.close()
        return r

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    upstreams = {name: Upstream() for name in ROUTES}
    for up in upstreams.values():
        threading.Thread(target=up.serve_forever, args=(0.05,), daemon=True).start()
    (tmp / "routes.yaml").write_text(manifests({n: u.port for n, u in upstreams.items()}))
    proxy, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEDA_", "KUBE"))}
    env.update(KEDA_HTTP_PROXY_PORT=str(proxy), KEDA_HTTP_ADMIN_PORT=str(admin),
               OTEL_PROM_EXPORTER_ENABLED="false", KEDA_HTTP_SHUTDOWN_DELAY="0s",
               KEDA_HTTP_DRAIN_TIMEOUT="2s")
    log = tmp / "interceptor.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(TWISTD + ["--manifests", str(tmp / "routes.yaml")], env=env,
                                cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    rig = Rig(proc, proxy, admin, log, upstreams)
    try:
        try:
            eventually(lambda: proc.poll() is not None
                       or admin_get(admin, "/readyz").status == 200,
                       timeout=20, what="/readyz 200")
            assert proc.poll() is None, "the interceptor exited"
            for name in ROUTES:  # every route serves before any probe runs
                eventually(lambda name=name: rig.get(name, "/sanity").status == 200,
                           what=f"{name} routed")
        except AssertionError as e:
            raise AssertionError(f"{e}; its log:\n{log.read_text()[-3000:]}") from None
        yield rig
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for up in upstreams.values():
            up.shutdown()
            up.server_close()


# -- 1. a response never reaches the wrong client ------------------------------

@pytest.mark.parametrize("first_status", [204, 304, 200])
def test_a_response_smuggled_behind_a_bodiless_one_never_reaches_the_next_client(
        rig, first_status):
    up, tok = rig.upstreams["stolen"], token()
    first, c1 = request(rig.proxy, b"GET /poison/%d/%s HTTP/1.1\r\nHost: stolen.test\r\n\r\n"
                        % (first_status, tok.encode()))
    assert first.status == first_status and first.body == b""
    second = rig.get("stolen", f"/second/{tok}")
    assert second.status == 200 and second.body == f"ok:GET /second/{tok}".encode()
    assert [s.index for s in up.requests(f"/second/{tok}")] == [0]  # a fresh connection
    # and the first client, on its kept-alive connection, was not sent it either
    c1.send(b"GET /third/%s HTTP/1.1\r\nHost: stolen.test\r\nConnection: close\r\n\r\n"
            % tok.encode())
    third = c1.response()
    c1.read_to_eof()
    c1.close()
    assert third.status == 200 and third.body == f"ok:GET /third/{tok}".encode()
    assert b"STOLEN" not in c1.received


def test_a_response_sent_on_an_idle_pooled_connection_never_reaches_a_client(rig):
    up, tok = rig.upstreams["stolen"], token()
    first = rig.get("stolen", f"/idle-poison/{tok}")
    assert first.body == f"ok:GET /idle-poison/{tok}".encode()
    up.event(tok).set()  # the upstream now sends STOLEN on the idle connection
    poisoned = up.requests(f"/idle-poison/{tok}")[0].conn
    closed = poll(lambda: poisoned in up.closed, timeout=3)
    after = rig.get("stolen", f"/after-idle/{tok}")
    assert after.status == 200 and after.body == f"ok:GET /after-idle/{tok}".encode()
    assert closed, "the proxy kept a connection that sent bytes while idle"


def test_a_body_sent_for_a_head_never_reaches_the_next_request(rig):
    up, tok = rig.upstreams["sloppy"], token()
    poster = Client(rig.proxy)  # connected ahead, to post the moment HEAD is answered
    head_client = Client(rig.proxy)
    head_client.send(b"HEAD /sloppy-head/%s HTTP/1.1\r\nHost: sloppy.test\r\n"
                     b"Connection: close\r\n\r\n" % tok.encode())
    head = head_client.response("HEAD")
    assert head.status == 200 and head.headers["content-length"] == "10"
    poster.send(b"POST /sloppy-post/%s HTTP/1.1\r\nHost: sloppy.test\r\n"
                b"Content-Length: 7\r\n\r\npayload" % tok.encode())
    posted = poster.response()
    assert (posted.status, posted.body) == (200, b"posted:payload")
    assert [(s.method, s.body) for s in up.requests(f"/sloppy-post/{tok}")] == [
        ("POST", b"payload")]  # exactly once
    after = rig.get("sloppy", f"/after/{tok}")
    assert after.status == 200 and after.body == f"ok:GET /after/{tok}".encode()
    head_client.read_to_eof()
    poster.close()
    head_client.close()
    for who in (head_client, poster):
        assert b"SLOPPYBODY" not in who.received
    assert b"SLOPPYBODY" not in after.body


# -- 2. broken and odd response framing ---------------------------------------

def test_an_unknown_transfer_coding_is_502_at_once(rig):
    tok = token()
    started = time.monotonic()
    r = rig.get("framing", f"/xchunked/{tok}", timeout=2)
    assert r.status == 502
    assert b"hello" not in r.body
    assert time.monotonic() - started < 2


def test_a_head_with_bare_lf_line_ends_is_served(rig):
    tok = token()
    started = time.monotonic()
    r = rig.get("framing", f"/bare-lf/{tok}", timeout=2)
    assert (r.status, r.body) == (200, b"hi")
    assert time.monotonic() - started < 2


# -- 3. an unasked-for 101 is never a tunnel ------------------------------------

def test_an_unsolicited_101_is_502_and_the_connection_stays_http(rig):
    up, tok = rig.upstreams["upgrade"], token()
    c = Client(rig.proxy, timeout=2)
    c.send(b"GET /upgrade/%s HTTP/1.1\r\nHost: upgrade.test\r\n\r\n" % tok.encode())
    r = c.response()
    assert r.status == 502
    try:
        c.send(b"PING-RAW\r\n\r\n")
        c.read_to_eof()  # a 400 for a bad request line, or just the close
    except OSError:
        pass  # reset or timed out: either way nothing came back raw
    c.close()
    assert b"RAW" not in c.received
    assert b"PING-RAW" not in up.tunnelled


# -- 4. nothing but idempotent requests is sent twice ----------------------------

def _drop_on_reused(rig, method: str, body: bytes = b"", extra: bytes = b""):
    """Warm the pool, then send C{method} to a target the upstream drops on
    first sight; (response, what the upstream saw of it)."""
    up, tok = rig.upstreams["replay"], token()
    assert rig.get("replay", f"/warm/{tok}").status == 200
    framing = b"Content-Length: %d\r\n" % len(body) if body else b""
    r, c = request(rig.proxy, b"%s /drop/%s HTTP/1.1\r\nHost: replay.test\r\n%s%s\r\n%s"
                   % (method.encode(), tok.encode(), framing, extra, body), method)
    c.close()
    seen = up.requests(f"/drop/{tok}")
    warm = up.requests(f"/warm/{tok}")[0]
    assert (seen[0].conn, seen[0].index) == (warm.conn, warm.index + 1), \
        "precondition: the request went out on the pooled connection"
    return r, seen


@pytest.mark.parametrize("method, body, extra", [
    ("DELETE", b"", b""), ("PUT", b"hi", b""), ("POST", b"hi", b""),
    ("POST", b"hi", b"Idempotency-Key: k1\r\n"),  # a body is never sent twice
], ids=["DELETE", "PUT", "POST", "POST-with-key"])
def test_a_non_idempotent_request_on_a_dropped_reused_connection_is_never_replayed(
        rig, method, body, extra):
    r, seen = _drop_on_reused(rig, method, body, extra)
    assert r.status == 502
    assert [(s.method, s.body) for s in seen] == [(method, body)]


@pytest.mark.parametrize("method, extra", [
    ("GET", b""), ("DELETE", b"Idempotency-Key: k1\r\n")], ids=["GET", "DELETE-with-key"])
def test_an_idempotent_request_on_a_dropped_reused_connection_is_replayed_once(
        rig, method, extra):
    r, seen = _drop_on_reused(rig, method, extra=extra)
    assert r.status == 200 and r.body == f"ok:{method} {seen[0].target}".encode()
    assert len(seen) == 2
    assert seen[1].index == 0 and seen[1].conn != seen[0].conn  # on a fresh connection


# -- 6. strict request parsing ------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"POST /s HTTP/1.1\r\nHost: strict.test\r\nContent-Length: 99999999999999999999\r\n\r\nx",
    b"POST /s HTTP/1.1\r\nHost: strict.test\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"POST /s HTTP/1.0\r\nHost: strict.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nx\r\n0\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: strict.test\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: strict.test\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET foo HTTP/1.1\r\nHost: strict.test\r\n\r\n",
], ids=["huge-content-length", "te-twice", "te-on-http10", "obs-fold", "ctl-in-value",
        "target-foo"])
def test_an_ambiguous_request_is_400_and_never_forwarded(rig, raw):
    up = rig.upstreams["strict"]
    before = len(up.requests())
    r, c = request(rig.proxy, raw, timeout=2)
    c.close()
    assert r.status == 400
    assert len(up.requests()) == before
    # the route itself works: the 400 is about the request, not the route
    assert rig.get("strict", "/fine").status == 200
    assert [s.target for s in up.requests()[before:]] == ["/fine"]


# -- 7. the admin port does not swallow a huge body ------------------------------

def test_a_huge_admin_post_is_405_at_once_and_costs_no_memory(rig):
    rss_before = rig.rss_kib()
    c = Client(rig.admin, timeout=3)
    started = time.monotonic()
    c.send(b"POST /queue HTTP/1.1\r\nHost: admin\r\nContent-Length: 1073741824\r\n\r\n")
    chunk, sent = b"x" * 65536, 0
    try:
        while sent < 4 << 20:
            c.send(chunk)
            sent += len(chunk)
    except socket.timeout:
        raise AssertionError(f"the admin port stopped reading after {sent} bytes "
                             "but kept the connection open") from None
    except OSError:
        pass  # closed on us: the body is not wanted
    try:
        c.read_to_eof()
    except socket.timeout:
        raise AssertionError(f"connection not closed; got {c.received[:200]!r}") from None
    finally:
        c.close()
    elapsed = time.monotonic() - started
    assert c.received.startswith(b"HTTP/1.1 405 "), c.received[:200]
    assert elapsed < 2, elapsed
    assert rig.rss_kib() - rss_before < 100 * 1024
    assert admin_get(rig.admin, "/queue").status == 200  # and it still serves


# -- 8. every request has stopped counting -------------------------------------

def test_after_all_probes_nothing_is_left_counting(rig):
    def idle():
        queue = json.loads(admin_get(rig.admin, "/queue").body)
        assert set(queue) == {f"default/{name}" for name in ROUTES}, queue
        return all(v["Concurrency"] == 0 for v in queue.values()) and queue

    eventually(idle, timeout=5, what="every route's Concurrency back to 0")
    assert rig.proc.poll() is None
    assert "Traceback" not in rig.log.read_text()
