"""
HTTP/1.1 trailers through the whole interceptor, over loopback: a raw
backend that answers with a chunked body and trailers, the real proxy, and
curl as the client (``--raw`` shows the chunked framing, trailers
included, as it came).  Request trailers go the other way, from a raw
client to the backend.
"""

import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue

from keda_proxy._app import Interceptor
from keda_proxy.ops._config import load_config
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.upstream._dial import StaticResolver
from keda_proxy.wire._framing import ChunkedDecoder
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import RawClient, wait_for

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

#: a chunked answer whose Trailer names two fields (one twice, one that can
#: never be a trailer), and whose trailers hold those two and a
#: Content-Length, which a client must never see as a trailer
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Trailer: X-Checksum, grpc-status, x-checksum, Content-Length\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n"
            b"0\r\nX-Checksum: abc123\r\ngrpc-status: 0\r\nContent-Length: 99\r\n\r\n")


class _Backend(Protocol):
    """Reads requests one at a time (a chunked body decoded, its trailers
    kept) and answers each with the factory's response."""

    def connectionMade(self):
        self._buffer = b""
        self._decoder = None

    def dataReceived(self, data):
        if self._decoder is not None:
            self._decoder.dataReceived(data)
            return
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        self._buffer = b""
        self._head, self._body = head, []
        if b"\r\ntransfer-encoding: chunked" in head.lower():
            self._decoder = ChunkedDecoder(self._body.append, self._request_done)
            self._decoder.dataReceived(rest)
        else:
            self._request_done(rest)

    def _request_done(self, rest):
        trailers = self._decoder.trailers if self._decoder is not None else []
        self._decoder = None
        self.factory.requests.append((self._head, b"".join(self._body), list(trailers)))
        self.transport.write(self.factory.response)
        if rest:
            self.dataReceived(rest)


class _Rig:
    """The raw backend and a whole interceptor in front of it, routing
    ``web.example`` there."""

    def __init__(self):
        self.backend = Factory.forProtocol(_Backend)
        self.backend.requests = []
        self.backend.response = RESPONSE
        self.backend_port = reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        bp = self.backend_port.getHost().port
        config = load_config({"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0"})
        self.ic = Interceptor.build(reactor, config, ALL_KINDS, plugins=(),
                                    resolver=StaticResolver({"web.default": "127.0.0.1"}))
        load(self.ic.store, routes=[route(hosts=["web.example"])],
             services=[service(ports=(("http", bp),))],
             slices=[endpoint_slice(ports=(("http", bp),))])
        self.proxy_port = reactor.listenTCP(0, self.ic.proxy_site(), interface="127.0.0.1")
        self.port = self.proxy_port.getHost().port

    @inlineCallbacks
    def stop(self):
        self.ic.pool.close_idle()
        yield self.proxy_port.stopListening()
        yield self.backend_port.stopListening()

    def curl(self, *args):
        """curl's output (``-i --raw``: the head, then the body as framed)
        and exit code, with the reactor running meanwhile."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return getProcessOutputAndValue(
            CURL, ("-s", "-i", "--raw", "--noproxy", "*", "--max-time", "10",
                   "-H", "Host: web.example", *args, f"http://127.0.0.1:{self.port}/"),
            env=env, reactor=reactor)


@pytest.fixture
def rig():
    r = _Rig()
    yield r
    pytest_twisted.blockon(r.stop())


def _split(output: bytes):
    head, _, body = output.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


@needs_curl
@pytest.mark.parametrize("te", [["-H", "TE: trailers"], []], ids=["te-trailers", "no-te"])
@pytest_twisted.inlineCallbacks
def test_response_trailers_reach_an_http11_client(rig, te):
    """With ``TE: trailers`` or without (as Go's ReverseProxy, which sends
    them regardless): announced in the head, after the last chunk."""
    out, err, code = yield rig.curl(*te)
    assert code == 0, err
    lines, body = _split(out)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Transfer-Encoding: chunked" in lines
    assert b"Trailer: X-Checksum, Grpc-Status" in lines
    assert not any(line.lower().startswith(b"content-length") for line in lines)
    assert body == (b"5\r\nhello\r\n6\r\n world\r\n"
                    b"0\r\nX-Checksum: abc123\r\nGrpc-Status: 0\r\n\r\n")
    # the client's TE reaches the upstream only as Go passes it on
    head = rig.backend.requests[0][0]
    assert (b"\r\nTE: trailers" in head) == bool(te)


@needs_curl
@pytest_twisted.inlineCallbacks
def test_an_http10_client_gets_the_body_without_trailers(rig):
    """No chunks, no room for trailers: the body ends with the connection."""
    out, err, code = yield rig.curl("--http1.0")
    assert code == 0, err
    lines, body = _split(out)
    assert lines[0] == b"HTTP/1.0 200 OK"
    assert not any(line.lower().startswith(b"transfer-encoding") for line in lines)
    assert body == b"hello world"


@needs_curl
@pytest_twisted.inlineCallbacks
def test_malformed_response_trailers_cut_the_response(rig):
    """A trailer line the head's rules refuse: the client's response is
    cut short (curl reports a transfer error), never ended cleanly."""
    rig.backend.response = RESPONSE.replace(b"grpc-status: 0", b"grpc status: 0")
    out, err, code = yield rig.curl()
    assert code != 0
    lines, body = _split(out)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert not body.endswith(b"0\r\n\r\n") and b"X-Checksum" not in body


@pytest_twisted.inlineCallbacks
def test_request_trailers_reach_an_http11_upstream(rig):
    """A chunked request's trailers follow its body upstream; fields that
    cannot be trailers do not."""
    client = yield RawClient.connect(rig.port)
    client.transport.write(
        b"POST /up HTTP/1.1\r\nHost: web.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n"
        b"0\r\nX-Checksum: 7f\r\nHost: evil.example\r\ngrpc-status: 0\r\n\r\n")
    yield wait_for(lambda: b"\r\n0\r\n" in client.received, timeout=10,
                   what="the response's end")
    client.transport.loseConnection()
    yield client.lost
    assert len(rig.backend.requests) == 1
    head, body, trailers = rig.backend.requests[0]
    assert head.startswith(b"POST /up HTTP/1.1\r\n")
    assert body == b"abcdefg"
    assert trailers == [b"X-Checksum: 7f", b"Grpc-Status: 0"]
