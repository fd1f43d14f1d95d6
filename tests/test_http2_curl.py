"""
HTTP/2 clients through the interceptor, as curl (nghttp2) speaks it:
``--http2-prior-knowledge`` (h2c) to the plain listener, ``--http2``
(ALPN h2) to the TLS listener.

Each listener forwards to an ordinary HTTP/1.1 backend (the HTTP/2
request is sent upstream as HTTP/1.1, and its response back as HTTP/2)
and to an HTTP/2 backend: h2c with prior knowledge behind a Service port
whose ``appProtocol`` is ``kubernetes.io/h2c`` for the plain listener,
h2 by ALPN for the TLS one (whose upstreams are always https).  The HTTP/2
backend is a small server on the C{h2} library, L{H2Backend}.

curl runs as a child process of the reactor, so the in-process proxy
keeps serving while it waits; each run is bounded by ``--max-time``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue

from keda_proxy._app import Interceptor
from keda_proxy.downstream._tls import ServerTLS
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.upstream._dial import StaticResolver
from keda_proxy.upstream._tls import UpstreamTLS
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import Backend, CountingSite, wait_for
from tests.test_tls import config, write_pair

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="no curl here")

H2C = "kubernetes.io/h2c"


# -- an HTTP/2 backend ------------------------------------------------------------

class HeldStream:
    """A response the test writes itself, as L{Backend}'s ``/held`` requests."""

    def __init__(self, protocol: "H2BackendProtocol", stream_id: int):
        self.protocol, self.stream_id = protocol, stream_id
        self.started = False

    def write(self, data: bytes) -> None:
        conn = self.protocol.conn
        if not self.started:
            self.started = True
            conn.send_headers(self.stream_id, [(b":status", b"200"),
                                               (b"content-type", b"text/plain")])
        self.protocol.send(self.stream_id, data)
        self.protocol.flush()

    def finish(self) -> None:
        self.protocol.send(self.stream_id, b"", end=True)
        self.protocol.flush()


class H2BackendProtocol(Protocol):
    """One HTTP/2 server connection: answers as L{Backend} does, a JSON
    echo of the request, with ``"version": "2"``; ``/held`` waits for the
    test.  Response bodies are sent as the peer's flow-control windows
    allow."""

    def __init__(self, backend: "H2Backend"):
        self.backend = backend
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.requests: dict = {}
        #: stream -> [body bytes not sent yet, end the stream after them]
        self.unsent: dict = {}

    def connectionMade(self):
        self.backend.connections += 1
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = (dict(event.headers), [])
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id][1].append(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, StreamEnded):
                self._respond(event.stream_id, *self.requests.pop(event.stream_id))
            elif isinstance(event, StreamReset):
                self.requests.pop(event.stream_id, None)
                self.unsent.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.transport.loseConnection()
        self.send_what_fits()
        self.flush()

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        entry = self.unsent.setdefault(stream_id, [b"", False])
        entry[0] += data
        entry[1] = entry[1] or end
        self.send_what_fits()

    def send_what_fits(self) -> None:
        for stream_id, entry in list(self.unsent.items()):
            data, end = entry
            while data:
                n = min(len(data), self.conn.local_flow_control_window(stream_id),
                        self.conn.max_outbound_frame_size)
                if n <= 0:
                    break
                self.conn.send_data(stream_id, data[:n])
                data = data[n:]
            entry[0] = data
            if not data:
                del self.unsent[stream_id]
                if end:
                    self.conn.end_stream(stream_id)

    def _respond(self, stream_id, headers, body):
        path = headers[b":path"].decode()
        self.backend.seen.append(headers)
        if path.startswith("/held"):
            self.backend.held.append(HeldStream(self, stream_id))
            return
        payload = json.dumps({
            "path": path,
            "method": headers[b":method"].decode(),
            "host": headers.get(b":authority", headers.get(b"host", b"")).decode(),
            "body": b"".join(body).decode("latin-1"),
            "version": "2",
        }).encode()
        head = headers[b":method"] == b"HEAD"
        self.conn.send_headers(stream_id, [
            (b":status", b"200"), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)), (b"x-backend", b"h2")], end_stream=head)
        if not head:
            self.send(stream_id, payload, end=True)


class H2Backend(Factory):
    def __init__(self):
        self.seen: list = []
        self.held: list = []
        self.connections = 0

    def buildProtocol(self, addr):
        return H2BackendProtocol(self)


# -- the rig ----------------------------------------------------------------------

#: the routes' hosts, each to its own Service and backend:
#: plain listener -> h1 (HTTP/1.1) and h2c; TLS listener -> h1s and h2s
BACKENDS = ("h1", "h2c", "h1s", "h2s")
NAMES = [f"{b}.example" for b in BACKENDS] + ["unknown.example"]


@pytest.fixture
def rig(tmp_path, ca):
    listening = []

    def listen(factory, tls=None):
        if tls is None:
            p = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            p = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        listening.append(p)
        return p.getHost().port

    def pod_tls(name, alpn=None):
        cert = ca.issue_cert(f"{name}.default")
        pair = ssl.PrivateCertificate.loadPEM(
            cert.private_key_pem.bytes() + cert.cert_chain_pems[0].bytes())
        return ssl.CertificateOptions(privateKey=pair.privateKey.original,
                                      certificate=pair.original, acceptableProtocols=alpn)

    class Rig:
        pass

    r = Rig()
    r.backends = {"h1": Backend(), "h2c": H2Backend(), "h1s": Backend(), "h2s": H2Backend()}
    ports = {
        "h1": listen(CountingSite(r.backends["h1"])),
        "h2c": listen(r.backends["h2c"]),
        "h1s": listen(CountingSite(r.backends["h1s"]), tls=pod_tls("h1s")),
        "h2s": listen(r.backends["h2s"], tls=pod_tls("h2s", alpn=[b"h2"])),
    }
    cert_path, key_path = write_pair(tmp_path / "certs", "tls",
                                     ca.issue_cert("proxy.example", *NAMES), with_ca=ca)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    r.cafile = str(tmp_path / "ca.pem")
    r.tmp_path = tmp_path
    c = config(tls_cert_path=cert_path, tls_key_path=key_path)
    r.ic = Interceptor.build(reactor, c, ALL_KINDS, plugins=(),
                             resolver=StaticResolver({f"{b}.default": "127.0.0.1"
                                                      for b in BACKENDS}),
                             dial_budget=0.3, upstream_tls=UpstreamTLS.from_config(c))
    load(r.ic.store,
         routes=[route(name=b, service=b, hosts=[f"{b}.example"]) for b in BACKENDS],
         services=[service(b, ports=(("http", ports[b]),), app_protocol=H2C if b == "h2c" else None)
                   for b in BACKENDS],
         slices=[endpoint_slice(service=b, ports=(("http", ports[b]),)) for b in BACKENDS])
    r.plain = listen(r.ic.proxy_site())
    r.tls = listen(r.ic.tls_proxy_site(), tls=ServerTLS.from_config(c))
    yield r
    r.ic.pool.close_idle()
    for p in listening:
        pytest_twisted.blockon(p.stopListening())


def curl_args(rig, host: str, path: str, *extra: str, tls: bool) -> list:
    """curl's arguments for C{path} on C{host} through the plain listener
    (h2c with prior knowledge) or the TLS one (h2 by ALPN)."""
    if tls:
        port, scheme, mode = rig.tls, "https", ["--http2", "--cacert", rig.cafile]
    else:
        port, scheme, mode = rig.plain, "http", ["--http2-prior-knowledge"]
    return [*mode, "--silent", "--show-error", "--max-time", "10", "--noproxy", "*",
            "--resolve", f"{host}:{port}:127.0.0.1", *extra,
            f"{scheme}://{host}:{port}{path}"]


def backend_args(rig, backend: str, path: str, *extra: str) -> list:
    """C{curl_args} for C{backend}'s host, on the listener it is behind."""
    return curl_args(rig, f"{backend}.example", path, *extra, tls=backend.endswith("s"))


@inlineCallbacks
def curl(rig, backend: str, path: str, *extra: str):
    """(HTTP version, status, headers, body) of one curl run: the body to
    a file, and on stdout the version, the status and the headers as JSON."""
    body_file = rig.tmp_path / "body"
    args = backend_args(rig, backend, path, "--output", str(body_file),
                     "--write-out", "%{http_version}\n%{response_code}\n%{header_json}", *extra)
    out, err, code = yield getProcessOutputAndValue(CURL, args, env=_env())
    assert code == 0, (code, err.decode())
    version, status, headers = out.decode().split("\n", 2)
    return version, int(status), json.loads(headers), body_file.read_bytes()


def _env():
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def _upstream_version(rig, backend: str) -> str:
    """The HTTP version the backend's last request came in."""
    seen = rig.backends[backend].seen[-1]
    if isinstance(seen, dict):  # H2Backend
        return "2"
    return seen.clientproto.decode().split("/")[1]


# -- the cases --------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.inlineCallbacks
def test_get(rig, backend):
    version, status, headers, body = yield curl(rig, backend, "/a/b?c=1")
    assert (version, status) == ("2", 200)
    echoed = json.loads(body)
    assert (echoed["path"], echoed["method"]) == ("/a/b?c=1", "GET")
    assert echoed["host"].split(":")[0] == f"{backend}.example"
    assert headers["x-backend"] == ["h2" if backend.startswith("h2") else "yes"]
    assert headers["x-keda-http-cold-start"] == ["false"]
    assert _upstream_version(rig, backend) == ("2" if backend.startswith("h2") else "1.1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.inlineCallbacks
def test_post_with_a_body(rig, backend):
    """A body larger than HTTP/2's initial 64 KiB window on each leg."""
    payload = os.urandom(100_000).hex()[:150_000].encode()
    (rig.tmp_path / "payload").write_bytes(payload)
    version, status, _, body = yield curl(rig, backend, "/post", "--data-binary",
                                          "@" + str(rig.tmp_path / "payload"))
    assert (version, status) == ("2", 200)
    echoed = json.loads(body)
    assert echoed["method"] == "POST"
    assert echoed["body"].encode() == payload
    assert _upstream_version(rig, backend) == ("2" if backend.startswith("h2") else "1.1")
    yield wait_for(lambda: rig.ic.counter.get(f"default/{backend}").concurrency == 0,
                   what="Concurrency back to 0")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.inlineCallbacks
def test_head_has_the_headers_and_no_body(rig, backend):
    version, status, headers, out = yield curl(rig, backend, "/", "--head")
    assert (version, status) == ("2", 200)
    assert out.startswith(b"HTTP/2 200") and out.endswith(b"\r\n\r\n")  # the head alone
    assert headers["x-backend"] == ["h2" if backend.startswith("h2") else "yes"]
    assert int(headers["content-length"][0]) > 0  # the length a GET's body would have
    yield wait_for(lambda: rig.ic.counter.get(f"default/{backend}").concurrency == 0,
                   what="Concurrency back to 0")


class Streaming(ProcessProtocol):
    """curl's output as it comes, to see a response arrive in pieces."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.inlineCallbacks
def test_a_streamed_response_arrives_as_it_is_sent(rig, backend):
    """The first chunk reaches curl while the backend still holds the
    response open; the second follows."""
    args = backend_args(rig, backend, "/held", "--no-buffer",
                     "--write-out", "\n%{http_version} %{response_code}")
    p = Streaming()
    reactor.spawnProcess(p, CURL, [CURL, *args], env=_env())
    held = rig.backends[backend].held
    yield wait_for(lambda: held or p.ended.called, what="the backend to get the request")
    assert held, p.err.decode()
    held[0].write(b"first chunk\n")
    yield wait_for(lambda: b"first chunk\n" in p.out or p.ended.called,
                   what="the first chunk at curl")
    assert p.out == b"first chunk\n", p.err.decode()
    held[0].write(b"second\n")
    held[0].finish()
    code = yield p.ended
    assert code == 0, p.err.decode()
    assert p.out == b"first chunk\nsecond\n\n2 200"
    yield wait_for(lambda: rig.ic.counter.get(f"default/{backend}").concurrency == 0,
                   what="Concurrency back to 0")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.inlineCallbacks
def test_a_request_body_of_unknown_length(rig, backend):
    """curl uploads from its standard input with no content-length: the
    body is streamed upstream (chunked to an HTTP/1.1 backend)."""
    payload = b"0123456789" * 20_000
    p = Streaming()
    args = backend_args(rig, backend, "/upload", "--upload-file", "-",
                        "--write-out", "\n%{http_version} %{response_code}")
    stdin = reactor.spawnProcess(p, CURL, [CURL, *args], env=_env())
    stdin.write(payload)
    stdin.closeStdin()
    code = yield p.ended
    assert code == 0, p.err.decode()
    body, _, tail = p.out.rpartition(b"\n")
    assert tail == b"2 200"
    echoed = json.loads(body)
    assert (echoed["method"], echoed["body"].encode()) == ("PUT", payload)
    assert _upstream_version(rig, backend) == ("2" if backend.startswith("h2") else "1.1")


@pytest.mark.parametrize("listener", ["plain", "tls"])
@pytest_twisted.inlineCallbacks
def test_unknown_host_is_404(rig, listener):
    args = curl_args(rig, "unknown.example", "/", tls=listener == "tls")
    out, err, code = yield getProcessOutputAndValue(
        CURL, ["--write-out", "\n%{http_version} %{response_code}", *args], env=_env())
    assert code == 0, err.decode()
    assert out == b"Not Found\n\n2 404"
