"""
The forwarding engine over real loopback sockets: large bodies both ways,
server-sent events, WebSocket-style tunnels, and hostile clients.
"""

import hashlib
import json
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.web import resource, server

from keda_proxy._app import Interceptor
from keda_proxy.ops._config import load_config
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.upstream._dial import StaticResolver
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import RawClient, wait_for

MB = 1024 * 1024


class HashingRequest(server.Request):
    """Hashes the upload as it arrives, so the backend holds none of it."""

    def gotLength(self, length):
        self.content = None
        self.sha = hashlib.sha256()
        self.size = 0

    def handleContentChunk(self, data):
        self.sha.update(data)
        self.size += len(data)

    def requestReceived(self, command, path, version):
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?")[0]
        self.args = {}
        self.process()


class Backend(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.sse = []
        self.ws = []

    def render(self, request):
        if request.path == b"/upload":
            return json.dumps({"sha256": request.sha.hexdigest(),
                               "size": request.size}).encode()
        if request.path == b"/download":
            size = int(request.uri.split(b"size=")[1])
            request.setHeader(b"content-length", b"%d" % size)
            _Streamer(request, size).start()
            return server.NOT_DONE_YET
        if request.path == b"/sse":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"")  # headers out now
            self.sse.append(request)
            return server.NOT_DONE_YET
        if request.path == b"/ws":
            self.ws.append(request)
            _upgrade_to_echo(request)
            return server.NOT_DONE_YET
        return b"?"


_BLOCK = bytes(range(256)) * 256  # 64 KiB


def _pattern(offset: int, n: int) -> bytes:
    """C{n} bytes of a repeating pattern, as found at C{offset}."""
    start = offset % len(_BLOCK)
    reps = (start + n) // len(_BLOCK) + 1
    return (_BLOCK * reps)[start:start + n]


class _Streamer:
    """Writes C{size} bytes with producer flow control."""

    def __init__(self, request, size):
        self.request, self.remaining, self.offset = request, size, 0
        self.paused = False

    def start(self):
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.remaining > 0:
            n = min(64 * 1024, self.remaining)
            self.request.write(_pattern(self.offset, n))
            self.offset += n
            self.remaining -= n
        if self.remaining == 0 and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()
            self.remaining = -1

    def stopProducing(self):
        self.remaining = -1


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def _upgrade_to_echo(request):
    transport = request.channel.transport
    transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n")
    echo = _Echo()
    request.channel.setTimeout(None)
    transport.protocol = echo
    echo.makeConnection(transport)


class Site(server.Site):
    requestFactory = HashingRequest

    def log(self, request):
        pass


@pytest.fixture
def rig():
    backend = Backend()
    bport = reactor.listenTCP(0, Site(backend), interface="127.0.0.1")
    bp = bport.getHost().port
    config = load_config({"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0"})
    ic = Interceptor.build(reactor, config, ALL_KINDS, plugins=(),
                           resolver=StaticResolver({"web.default": "127.0.0.1"}),
                           dial_budget=0.3)
    load(ic.store, routes=[route(hosts=["web.example"])],
         services=[service(ports=(("http", bp),))],
         slices=[endpoint_slice(ports=(("http", bp),))])
    pport = reactor.listenTCP(0, ic.proxy_site(), interface="127.0.0.1")

    class R:
        pass

    r = R()
    r.backend, r.ic, r.port = backend, ic, pport.getHost().port
    yield r
    ic.pool.close_idle()
    pytest_twisted.blockon(pport.stopListening())
    pytest_twisted.blockon(bport.stopListening())


class Collector(RawClient):
    """Reads a response head, then hashes the body without keeping it."""

    def __init__(self):
        super().__init__()
        self.head = None
        self.sha = hashlib.sha256()
        self.size = 0

    def dataReceived(self, data):
        if self.head is None:
            self.received += data
            if b"\r\n\r\n" in self.received:
                self.head, rest = self.received.split(b"\r\n\r\n", 1)
                self.received = b""
                self._body(rest)
            return
        self._body(data)

    def _body(self, data):
        self.sha.update(data)
        self.size += len(data)


@pytest_twisted.inlineCallbacks
def test_large_upload_streams_through_intact(rig):
    size = 24 * MB
    client = yield RawClient.connect(rig.port)
    client.transport.write(b"POST /upload HTTP/1.1\r\nHost: web.example\r\n"
                           b"Content-Length: %d\r\n\r\n" % size)
    sha = hashlib.sha256()
    sent = 0
    while sent < size:
        n = min(MB, size - sent)
        chunk = _pattern(sent, n)
        sha.update(chunk)
        client.transport.write(chunk)
        sent += n
    yield wait_for(lambda: b"\r\n\r\n{" in client.received and client.received.endswith(b"}"),
                   timeout=30, what="upload response")
    body = json.loads(client.received.split(b"\r\n\r\n", 1)[1])
    assert body == {"sha256": sha.hexdigest(), "size": size}
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_chunked_upload_streams_through_intact(rig):
    client = yield RawClient.connect(rig.port)
    client.transport.write(b"POST /upload HTTP/1.1\r\nHost: web.example\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
    sha = hashlib.sha256()
    for i in range(20):
        chunk = os.urandom(50_000 + i)
        sha.update(chunk)
        client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    client.transport.write(b"0\r\n\r\n")
    yield wait_for(lambda: client.received.endswith(b"}"), timeout=30, what="response")
    body = json.loads(client.received.split(b"\r\n\r\n", 1)[1])
    assert body["sha256"] == sha.hexdigest()
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_large_download_streams_through_intact(rig):
    size = 48 * MB
    client = yield _connect(Collector, rig.port)
    client.transport.write(b"GET /download?size=%d HTTP/1.1\r\nHost: web.example\r\n\r\n" % size)
    yield wait_for(lambda: client.size >= size, timeout=60, what="download")
    assert b"Content-Length: %d" % size in client.head
    expected = hashlib.sha256()
    for off in range(0, size, 64 * 1024):
        expected.update(_pattern(off, min(64 * 1024, size - off)))
    assert client.sha.hexdigest() == expected.hexdigest()
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_server_sent_events_arrive_one_by_one(rig):
    client = yield RawClient.connect(rig.port)
    client.transport.write(b"GET /sse HTTP/1.1\r\nHost: web.example\r\n\r\n")
    yield wait_for(lambda: rig.backend.sse, what="backend got the request")
    stream = rig.backend.sse[0]
    for i in range(3):
        event = b"data: event %d\n\n" % i
        stream.write(event)
        yield wait_for(lambda e=event: e in client.received, what=f"event {i}")
    assert b"text/event-stream" in client.received
    stream.finish()
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_websocket_tunnel_echoes_both_ways_and_is_counted(rig):
    client = yield RawClient.connect(rig.port)
    client.transport.write(b"GET /ws HTTP/1.1\r\nHost: web.example\r\nConnection: Upgrade\r\n"
                           b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
    yield wait_for(lambda: b"101 Switching Protocols" in client.received, what="101")
    assert rig.ic.counter.get("default/web").concurrency == 1
    client.received = b""
    client.transport.write(b"\x81\x05hello")  # a text frame
    yield wait_for(lambda: client.received == b"\x81\x05hello", what="text echo")
    client.transport.write(b"\x82\x03\x00\x01\x02")  # a binary frame
    yield wait_for(lambda: client.received.endswith(b"\x82\x03\x00\x01\x02"),
                   what="binary echo")
    client.transport.loseConnection()
    yield client.lost
    yield wait_for(lambda: rig.ic.counter.get("default/web").concurrency == 0,
                   what="tunnel uncounted")


@pytest_twisted.inlineCallbacks
def test_smuggling_attempt_is_refused_and_nothing_reaches_the_backend(rig):
    client = yield RawClient.connect(rig.port)
    client.transport.write(
        b"POST /upload HTTP/1.1\r\nHost: web.example\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
    yield client.lost
    assert client.received.startswith(b"HTTP/1.1 400 Bad Request")
    assert rig.ic.counter.get("default/web").request_count == 0


@pytest_twisted.inlineCallbacks
def test_client_disconnect_mid_download_returns_concurrency_to_zero(rig):
    client = yield _connect(Collector, rig.port)
    client.transport.write(b"GET /download?size=%d HTTP/1.1\r\nHost: web.example\r\n\r\n"
                           % (200 * MB))
    yield wait_for(lambda: client.size > MB, what="some of the body")
    client.transport.abortConnection()
    yield wait_for(lambda: rig.ic.counter.get("default/web").concurrency == 0,
                   what="concurrency back to 0")


def _connect(cls, port):
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), cls())

