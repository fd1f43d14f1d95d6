"""
HTTP/2 upstreams end to end, over loopback: an in-process interceptor
whose clients speak HTTP/1.1, forwarding over HTTP/2 to

 - a real gRPC server (grpcio, tests/grpcpeers.py) on a Service port whose
   ``appProtocol`` is ``kubernetes.io/h2c``, or over TLS with a
   certificate for the Service's name, where ALPN picks h2;
 - a small h2c server of the h2 library (L{H2Backend}), for ordinary
   requests, a body larger than every window, and WebSocket upgrades
   (which it takes over HTTP/1.1, as the proxy sends them).

Certificates are made at test time; every wait is bounded.
"""

from __future__ import annotations

import json
import struct

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded, WindowUpdated
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from keda_proxy._app import Interceptor
from keda_proxy.downstream._tls import ServerTLS
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.upstream._dial import StaticResolver, UpstreamEndpoints
from keda_proxy.upstream._schemes import H2C_APP_PROTOCOL
from keda_proxy.upstream._tls import UpstreamTLS
from tests.builders import endpoint_slice, load, route, service
from tests.grpcpeers import PeerServer, call
from tests.netsupport import RawClient, wait_for
from tests.test_tls import config, write_pair

HOST = b"web.example"


# -- an h2c server of the h2 library ------------------------------------------------


class H2Backend(Protocol):
    """Answers HTTP/2 with prior knowledge, and HTTP/1.1 upgrades (a
    connection that does not open with the HTTP/2 preface):

     - ``/echo``: 200, the request's header fields as JSON;
     - ``/big``: 200, C{factory.big} bytes sent as fast as the client's
       windows let them (what was sent is in C{factory.sent});
     - an HTTP/1.1 request with ``Upgrade``: 101, then every byte back.
    """

    h2 = None
    _tunnel = False

    def dataReceived(self, data):
        if self._tunnel:
            self.transport.write(data)
            return
        if self.h2 is None:
            if not data.startswith(b"PRI * HTTP/2.0"):
                self.factory.http1.append(data.split(b"\r\n", 1)[0])
                self._tunnel = True
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n"
                                     b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                return
            self.factory.connections += 1
            self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
            self.h2.initiate_connection()
            self.big = {}
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                self.factory.requests.append(event.headers)
                path = dict(event.headers)[b":path"]
                if path == b"/big":
                    self.h2.send_headers(event.stream_id, [
                        (b":status", b"200"), (b"content-length", b"%d" % self.factory.big)])
                    self.big[event.stream_id] = self.factory.big
                else:
                    body = json.dumps([[n.decode(), v.decode()]
                                       for n, v in event.headers]).encode()
                    self.h2.send_headers(event.stream_id, [
                        (b":status", b"200"), (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body))])
                    self.h2.send_data(event.stream_id, body, end_stream=True)
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
            elif isinstance(event, (WindowUpdated, StreamEnded)):
                pass
        self._send_big()
        self.transport.write(self.h2.data_to_send())

    def _send_big(self):
        h2 = self.h2
        for sid, left in list(self.big.items()):
            while left:
                n = min(left, h2.max_outbound_frame_size, h2.local_flow_control_window(sid))
                if n <= 0:
                    break
                left -= n
                self.factory.sent += n
                h2.send_data(sid, b"x" * n, end_stream=not left)
            if left:
                self.big[sid] = left
            else:
                del self.big[sid]


class H2BackendFactory(Factory):
    protocol = H2Backend

    def __init__(self, big=0):
        self.big = big
        self.sent = 0
        self.requests = []
        self.http1 = []
        self.connections = 0
        self.instances = []

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        self.instances.append(proto)
        return proto


# -- clients ----------------------------------------------------------------------------


class Counting(Protocol):
    """An HTTP/1.1 client that keeps the head and counts the body."""

    def __init__(self):
        self.head = b""
        self.body = 0
        self.lost = Deferred()

    def dataReceived(self, data):
        if b"\r\n\r\n" not in self.head:
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.head, _, rest = self.head.partition(b"\r\n\r\n")
                self.head += b"\r\n\r\n"
                self.body += len(rest)
            return
        self.body += len(data)

    def connectionLost(self, reason):
        self.lost.callback(None)


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def dechunk(raw: bytes):
    """The body and the trailer lines of a chunked HTTP/1.1 response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        size = int(size, 16)
        if size == 0:
            trailers = rest.split(b"\r\n\r\n", 1)[0]
            return head, body, [t for t in trailers.split(b"\r\n") if t]
        body += rest[:size]
        rest = rest[size + 2:]


def grpc_request(path: bytes, message: bytes, host: bytes = HOST) -> bytes:
    """A gRPC call as an HTTP/1.1 client would send it."""
    body = grpc_frame(message)
    return (b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Content-Type: application/grpc\r\nTE: trailers\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


# -- the rig -----------------------------------------------------------------------------


class Rig:
    def __init__(self, tmp_path, ca):
        self.tmp_path, self.ca = tmp_path, ca
        self.listening = []
        self.grpc = []
        self.ics = []

    def proxy(self, port, app_protocol=H2C_APP_PROTOCOL, direct_pod_routing=True,
              server_name="web.default"):
        """An interceptor routing C{HOST} to the Service ``default/web``
        on 127.0.0.1:C{port}; its plain and TLS listeners' ports."""
        cert_path, key_path = write_pair(self.tmp_path / "certs", "tls",
                                         self.ca.issue_cert("proxy.example"), with_ca=self.ca)
        c = config(tls_cert_path=cert_path, tls_key_path=key_path,
                   direct_pod_routing=direct_pod_routing)
        self.ic = Interceptor.build(reactor, c, ALL_KINDS, plugins=(),
                                    resolver=StaticResolver({server_name: "127.0.0.1"}),
                                    dial_budget=0.5, upstream_tls=UpstreamTLS.from_config(c))
        self.ics.append(self.ic)
        load(self.ic.store, routes=[route(hosts=[HOST.decode()])],
             services=[service(ports=(("http", port),), app_protocol=app_protocol)],
             slices=[endpoint_slice(ports=(("http", port),))])
        plain = self._listen(reactor.listenTCP(0, self.ic.proxy_site(), interface="127.0.0.1"))
        tls = self._listen(reactor.listenSSL(0, self.ic.tls_proxy_site(),
                                             ServerTLS.from_config(c), interface="127.0.0.1"))
        return plain, tls

    def grpc_server(self, tls_name=None) -> int:
        server = PeerServer()
        self.grpc.append(server)
        return server.start(tls=self.ca.issue_cert(tls_name) if tls_name else None)

    def backend(self, factory) -> int:
        return self._listen(reactor.listenTCP(0, factory, interface="127.0.0.1"))

    def _listen(self, port):
        self.listening.append(port)
        return port.getHost().port

    @inlineCallbacks
    def stop(self):
        for ic in self.ics:
            ic.pool.close_idle()
        for server in self.grpc:
            yield call(server.stop)
        for p in self.listening:
            yield p.stopListening()


@pytest.fixture
def rig(tmp_path, ca):
    r = Rig(tmp_path, ca)
    yield r
    pytest_twisted.blockon(r.stop())


@inlineCallbacks
def exchange(port, raw: bytes, tls_ca=None, what="response"):
    """Send C{raw} on a new connection (TLS to the proxy's TLS listener with
    C{tls_ca}); everything received until the connection closes."""
    if tls_ca is None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    else:
        options = ssl.optionsForClientTLS(
            "proxy.example", trustRoot=ssl.Certificate.loadPEM(tls_ca.cert_pem.bytes()))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    proto = yield connectProtocol(endpoint, RawClient())
    proto.transport.write(raw)
    yield wait_for(lambda: proto.lost.called, timeout=15, what=what)
    return proto.received


def h2_connections(ic):
    return [conn for conns in ic.pool._h2.values() for conn in conns]


# -- gRPC from an HTTP/1.1 client ---------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_an_http1_client_calls_a_grpc_server_over_h2c(rig):
    plain, _ = rig.proxy(rig.grpc_server())
    raw = yield exchange(plain, grpc_request(b"/keda.test.Peer/Echo", b"ping"))
    head, body, trailers = dechunk(raw)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: application/grpc\r\n" in head
    assert b"\r\nX-Peer: echo\r\n" in head
    assert body == grpc_frame(b"ping")
    assert b"Grpc-Status: 0" in trailers and b"X-Peer-Trailer: done" in trailers
    [(method, metadata, _)] = rig.grpc[0].calls
    assert method == "Echo" and metadata.get("x-forwarded-for") == "127.0.0.1"


@pytest_twisted.inlineCallbacks
def test_a_grpc_error_reaches_the_http1_client_as_trailers(rig):
    plain, _ = rig.proxy(rig.grpc_server())
    raw = yield exchange(plain, grpc_request(b"/keda.test.Peer/Count", b"2:NOT_FOUND:gone"))
    head, body, trailers = dechunk(raw)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == grpc_frame(b"0") + grpc_frame(b"1")
    assert b"Grpc-Status: 5" in trailers and b"Grpc-Message: gone" in trailers


@pytest_twisted.inlineCallbacks
def test_grpc_over_tls_speaks_h2_by_alpn_and_checks_the_service_name(rig, ca):
    _, tls = rig.proxy(rig.grpc_server(tls_name="web.default"), app_protocol=None)
    raw = yield exchange(tls, grpc_request(b"/keda.test.Peer/Echo", b"secure"), tls_ca=ca)
    head, body, trailers = dechunk(raw)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:300]
    assert body == grpc_frame(b"secure") and b"Grpc-Status: 0" in trailers
    [conn] = h2_connections(rig.ic)
    assert conn.scheme == b"https"
    [key] = rig.ic.pool._h2
    assert key == (b"https", "127.0.0.1", rig.grpc[0].port, "web.default")


@pytest_twisted.inlineCallbacks
def test_grpc_over_tls_with_a_certificate_for_another_name_is_502(rig, ca):
    _, tls = rig.proxy(rig.grpc_server(tls_name="evil.default"), app_protocol=None)
    raw = yield exchange(tls, grpc_request(b"/keda.test.Peer/Echo", b"x"), tls_ca=ca)
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert rig.grpc[0].calls == []


# -- ordinary HTTP to an h2c server ----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_requests_to_an_h2c_service_share_one_connection(rig):
    factory = H2BackendFactory()
    plain, _ = rig.proxy(rig.backend(factory))
    results = yield _two_gets(plain)
    for raw in results:
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:200]
        fields = dict(json.loads(raw.split(b"\r\n\r\n", 1)[1]))
        assert fields[":scheme"] == "http" and fields[":authority"] == "web.example"
        assert fields[":path"] == "/echo?q=1" and fields["x-forwarded-proto"] == "http"
        assert "connection" not in fields and "host" not in fields
    assert factory.connections == 1 and len(factory.requests) == 2


@inlineCallbacks
def _two_gets(port):
    got = []
    for _ in range(2):
        raw = yield exchange(port, b"GET /echo?q=1 HTTP/1.1\r\nHost: web.example\r\n"
                                   b"Connection: close\r\n\r\n")
        got.append(raw)
    return got


@pytest_twisted.inlineCallbacks
def test_a_slow_client_holds_the_h2_upstream_back(rig):
    """The client stops reading: the proxy stops acknowledging the stream,
    and the upstream stops sending well before the body's end; the body
    then arrives whole once the client reads again."""
    size = 32 << 20
    factory = H2BackendFactory(big=size)
    plain, _ = rig.proxy(rig.backend(factory))
    client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", plain), Counting())
    client.transport.pauseProducing()  # read nothing
    client.transport.write(b"GET /big HTTP/1.1\r\nHost: web.example\r\n\r\n")

    def held_back():
        streams = [s for c in h2_connections(rig.ic) for s in c.streams.values()]
        return bool(streams) and streams[0]._paused and _window_closed(factory)

    echo = b"GET /echo HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n"
    yield wait_for(held_back, timeout=20, what="the upstream held back")
    # A request on the same connection is answered after the upstream read
    # everything the proxy sent before it, the window it handed back for
    # what the client took before it stopped included; so after one, the
    # upstream has sent all it ever may ...
    raw = yield exchange(plain, echo)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and factory.connections == 1
    yield wait_for(held_back, timeout=20, what="the upstream held back")
    sent = factory.sent
    assert sent < size // 2
    # ... and after another, no window was opened meanwhile
    raw = yield exchange(plain, echo)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and factory.connections == 1
    assert factory.sent == sent and _window_closed(factory)
    client.transport.resumeProducing()
    yield wait_for(lambda: client.body == size, timeout=30, what="the whole body")
    assert client.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: %d\r\n" % size in client.head


def _window_closed(factory) -> bool:
    """Whether the backend has more to send and no window to send it."""
    return bool(factory.instances) and any(
        p.big and all(p.h2.local_flow_control_window(sid) == 0 for sid in p.big)
        for p in factory.instances)


@pytest_twisted.inlineCallbacks
def test_a_websocket_upgrade_to_an_h2c_service_goes_over_http1(rig):
    factory = H2BackendFactory()
    plain, _ = rig.proxy(rig.backend(factory))
    client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", plain), RawClient())
    client.transport.write(b"GET /chat HTTP/1.1\r\nHost: web.example\r\nConnection: Upgrade\r\n"
                           b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    yield wait_for(lambda: b"\r\n\r\n" in client.received, what="the 101")
    assert client.received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    client.transport.write(b"frames both ways")
    yield wait_for(lambda: client.received.endswith(b"frames both ways"), what="the echo")
    assert factory.http1 == [b"GET /chat HTTP/1.1"] and factory.connections == 0
    client.transport.loseConnection()
    yield client.lost


# -- ALPN on the upstream's TLS ---------------------------------------------------------


class ALPNServer(Protocol):
    def dataReceived(self, data):
        pass


@implementer(IHandshakeListener)
class ALPNProbe(Protocol):
    """Tells which protocol the handshake chose."""

    def __init__(self):
        self.negotiated = Deferred()

    def dataReceived(self, data):
        pass

    def handshakeCompleted(self):
        self.negotiated.callback(self.transport.negotiatedProtocol)

    def connectionLost(self, reason):
        if not self.negotiated.called:
            self.negotiated.errback(reason)


@pytest_twisted.inlineCallbacks
def test_upstream_tls_offers_h2_and_http1_and_upgrades_only_http1(tmp_path, ca):
    """An upstream that speaks both gets h2 from the proxy's usual dial,
    and http/1.1 from the one for requests that must stay on HTTP/1.1."""
    leaf = ca.issue_cert("web.default")
    pair = ssl.PrivateCertificate.loadPEM(
        leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    server_options = ssl.CertificateOptions(
        privateKey=pair.privateKey.original, certificate=pair.original,
        acceptableProtocols=[b"h2", b"http/1.1"])
    port = reactor.listenSSL(0, Factory.forProtocol(ALPNServer), server_options,
                             interface="127.0.0.1")
    try:
        cert_path, key_path = write_pair(tmp_path / "certs", "tls",
                                         ca.issue_cert("proxy.example"), with_ca=ca)
        upstream = UpstreamTLS.from_config(config(tls_cert_path=cert_path,
                                                  tls_key_path=key_path))
        endpoints = UpstreamEndpoints(reactor, StaticResolver(), tls=upstream)
        number = port.getHost().port
        for scheme, expected in [(b"https", b"h2"), (b"https+http/1.1", b"http/1.1")]:
            probe = yield endpoints.endpoint_for(
                (scheme, "127.0.0.1", number, "web.default"), 1.0).connect(
                    Factory.forProtocol(ALPNProbe))
            assert (yield probe.negotiated) == expected
            probe.transport.loseConnection()
    finally:
        yield port.stopListening()
