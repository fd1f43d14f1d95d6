"""
gRPC end to end through an in-process interceptor: real grpcio clients
and servers (tests/grpcpeers.py) on either side, HTTP/2 on both legs.

The client speaks h2c with prior knowledge to the plain listener (or h2
over TLS to the TLS listener); the proxy forwards each call, a stream, as
one request through the usual path (routing on ``:authority``, counting
in ``/queue``, the cold-start hold) to a Service port whose
``appProtocol`` is ``kubernetes.io/h2c`` (or, over TLS, to a pod that
picks h2 by ALPN).  Since a gRPC server speaks nothing but HTTP/2, any
success here also says the upstream leg was HTTP/2.

Every client call runs in a thread with a deadline; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import queue

import grpc
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from keda_proxy._app import Interceptor
from keda_proxy.downstream._tls import ServerTLS
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.upstream._dial import StaticResolver
from keda_proxy.upstream._tls import UpstreamTLS
from tests.builders import endpoint_slice, load, route, service
from tests.grpcpeers import (
    H2C,
    PeerClient,
    PeerServer,
    call,
    status_of,
    stream_and_status,
)
from tests.netsupport import Client, wait_for
from tests.test_tls import config, write_pair

KEY = "default/grpc"
#: what the client sends as :authority, and the route's host
AUTHORITY = "grpc.example"
#: every call's deadline (seconds), but the 8 MiB ones
DEADLINE = 10.0


class Rig:
    """A gRPC server, an interceptor routing ``grpc.example`` to it, and
    the interceptor's plain, TLS, admin and metrics listeners on loopback."""

    def __init__(self, tmp_path, ca):
        self.tmp_path, self.ca = tmp_path, ca
        self.listening = []
        self.clients = []
        self.servers = []
        self.http = Client()
        self.connections = 0

    def start(self, tls_upstream=False, pod_name="grpc.default", ready=True,
              **config_kw):
        """C{tls_upstream}: the server speaks TLS with a certificate for
        C{pod_name} (and its ``.svc`` name), its Service port has no
        appProtocol, and calls are made to the TLS listener."""
        self.server = PeerServer()
        self.servers.append(self.server)
        leaf = self.ca.issue_cert(pod_name, pod_name + ".svc") if tls_upstream else None
        port = self.server.start(tls=leaf)
        cert_path, key_path = write_pair(self.tmp_path / "certs", "tls",
                                         self.ca.issue_cert("proxy.example", AUTHORITY),
                                         with_ca=self.ca)
        self.config = config(tls_cert_path=cert_path, tls_key_path=key_path, **config_kw)
        self.ic = Interceptor.build(reactor, self.config, ALL_KINDS, plugins=(),
                                    resolver=StaticResolver({"grpc.default": "127.0.0.1"}),
                                    dial_budget=0.3,
                                    upstream_tls=UpstreamTLS.from_config(self.config))
        self.routes = [route(name="grpc", service="grpc", port_name="grpc",
                             hosts=[AUTHORITY])]
        self.services = [service(name="grpc", ports=(("grpc", port),),
                                 app_protocol=None if tls_upstream else H2C)]
        self.slices = [endpoint_slice(service="grpc", ports=(("grpc", port),))]
        self.load(slices=self.slices if ready else [])

        site = self.proxy_factory = self.ic.proxy_site()
        build = site.buildProtocol

        def counting(addr):
            self.connections += 1
            return build(addr)

        site.buildProtocol = counting
        self.proxy_port = self._listen(site)
        self.tls_port = self._listen(self.ic.tls_proxy_site(),
                                     tls=ServerTLS.from_config(self.config))
        self.admin_port = self._listen(self.ic.admin_site())
        self.metrics_port = self._listen(self.ic.metrics_site())
        return self

    def _listen(self, factory, tls=None):
        if tls is None:
            p = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            p = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.listening.append(p)
        return p.getHost().port

    def load(self, **kw):
        args = dict(routes=self.routes, services=self.services, slices=self.slices)
        args.update(kw)
        load(self.ic.store, **args)

    def client(self) -> PeerClient:
        """A channel (one connection) to the plain listener, h2c."""
        c = PeerClient.plain(self.proxy_port, authority=AUTHORITY)
        self.clients.append(c)
        return c

    def tls_client(self) -> PeerClient:
        """A channel to the TLS listener, h2 by ALPN, checking the proxy's
        certificate for C{grpc.example}."""
        c = PeerClient.tls(self.tls_port, self.ca.cert_pem.bytes(), AUTHORITY)
        self.clients.append(c)
        return c

    @inlineCallbacks
    def queue(self):
        resp = yield self.http.http.get(f"http://127.0.0.1:{self.admin_port}/queue")
        return json.loads((yield resp.content()))

    @inlineCallbacks
    def settled(self):
        """Wait for nothing in flight, then read ``/queue``: the route's entry."""
        yield wait_for(lambda: self.ic.counter.get(KEY).concurrency == 0,
                       what="Concurrency back to 0")
        return (yield self.queue())[KEY]

    @inlineCallbacks
    def request_count(self, code="200", method="POST") -> float:
        """The route's ``interceptor_request_count_total`` in ``/metrics``."""
        resp = yield self.http.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        text = (yield resp.content()).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "interceptor_request_count_total" and s.labels == {
                        "code": code, "method": method, "route_name": "grpc",
                        "route_namespace": "default"}:
                    return s.value
        return 0

    @inlineCallbacks
    def stop(self):
        for c in self.clients:
            c.close()
        for s in self.servers:
            yield call(s.stop)
        yield self.http.close()
        self.ic.pool.close_idle()
        for p in self.listening:
            yield p.stopListening()


@pytest.fixture
def rig(tmp_path, ca):
    r = Rig(tmp_path, ca)
    yield r
    pytest_twisted.blockon(r.stop())


# -- the peers alone ------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_the_peers_speak_every_kind_of_call_to_each_other_directly(ca):
    """The baseline for everything below: the same calls, no proxy."""
    plain, secure = PeerServer(), PeerServer()
    clients = []
    try:
        port = plain.start()
        tls_port = secure.start(tls=ca.issue_cert("grpc.default", "grpc.default.svc"))
        clients = [PeerClient.plain(port, authority=AUTHORITY),
                   PeerClient.tls(tls_port, ca.cert_pem.bytes(), "grpc.default")]
        for c in clients:
            assert (yield call(c.echo, b"hi", timeout=DEADLINE)) == b"hi"
            assert (yield call(lambda c=c: list(c.count(b"3", timeout=DEADLINE)))) == [
                b"0", b"1", b"2"]
            assert (yield call(c.sum, iter([b"ab", b"cde"]), timeout=DEADLINE)) == b"5"
            echoed = yield call(lambda c=c: list(c.echo_each(iter([b"x", b"y"]),
                                                             timeout=DEADLINE)))
            assert echoed == [b"x", b"y"]
            code, details = yield call(status_of, c.fail, b"NOT_FOUND:gone", timeout=DEADLINE)
            assert (code, details) == (grpc.StatusCode.NOT_FOUND, "gone")
    finally:
        for c in clients:
            c.close()
        yield call(plain.stop)
        yield call(secure.stop)


# -- the four kinds of call -----------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_unary_call_with_metadata_both_ways(rig):
    rig.start()
    c = rig.client()

    def unary():
        response, done = c.echo.with_call(b"hello", timeout=DEADLINE,
                                          metadata=(("x-test", "sent"),))
        return response, dict(done.initial_metadata()), dict(done.trailing_metadata())

    response, initial, trailing = yield call(unary)
    assert response == b"hello"
    assert initial["x-peer"] == "echo"
    assert initial["x-keda-http-cold-start"] == "false"
    assert trailing["x-peer-trailer"] == "done"  # trailers relayed, not only grpc-status
    [(method, metadata, _)] = rig.server.calls
    assert (method, metadata["x-test"]) == ("Echo", "sent")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}
    assert rig.connections == 1


@pytest_twisted.inlineCallbacks
def test_server_streaming(rig):
    rig.start()
    c = rig.client()
    got = yield call(lambda: list(c.count(b"100", timeout=DEADLINE)))
    assert got == [b"%d" % i for i in range(100)]
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_client_streaming(rig):
    rig.start()
    c = rig.client()
    messages = [os.urandom(n) for n in (0, 1, 1000, 70_000, 5, 200_000)]
    total = yield call(c.sum, iter(messages), timeout=DEADLINE)
    assert total == b"%d" % sum(map(len, messages))
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_bidi_streaming_is_full_duplex(rig):
    """Each message's echo comes back before the next message is sent: the
    proxy forwards the request body and the response body at once."""
    rig.start()
    c = rig.client()

    def ping_pong():
        outgoing = queue.Queue()
        responses = c.echo_each(iter(outgoing.get, None), timeout=DEADLINE)
        got = []
        for i in range(10):
            outgoing.put(b"ping %d" % i)
            got.append(next(responses))
        outgoing.put(None)
        assert list(responses) == []
        return got

    got = yield call(ping_pong)
    assert got == [b"ping %d" % i for i in range(10)]
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


# -- status, deadline, cancel ---------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_error_status_and_message_reach_the_client(rig):
    """``grpc-status`` and ``grpc-message`` (percent-encoded on the wire)
    relayed: in a trailers-only response, and in trailers after messages."""
    rig.start()
    c = rig.client()
    message = "no such thing: 100% gone, ünïcode"
    code, details = yield call(status_of, c.fail, f"NOT_FOUND:{message}".encode(),
                               timeout=DEADLINE)
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, message)
    got, status = yield call(stream_and_status, c.count, b"3:RESOURCE_EXHAUSTED:enough",
                             timeout=DEADLINE)
    assert got == [b"0", b"1", b"2"]
    assert status == (grpc.StatusCode.RESOURCE_EXHAUSTED, "enough")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 2}


@pytest_twisted.inlineCallbacks
def test_deadline_expires(rig):
    """DEADLINE_EXCEEDED at the client; the call ends at the server too
    (grpc-timeout forwarded, or the stream reset), and nothing stays
    counted in flight."""
    rig.start()
    c = rig.client()
    code, _ = yield call(status_of, c.sleep, b"deadline-token", timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    yield wait_for(lambda: b"deadline-token" in rig.server.cancelled,
                   what="the server to see the call end")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_deadline_expires_while_the_call_is_held_for_a_cold_start(rig):
    """The client gives up (RST_STREAM) before any endpoint is ready: the
    held request is dropped, not left waiting for the pod."""
    rig.start(ready=False)
    c = rig.client()
    code, _ = yield call(status_of, c.echo, b"too late", timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    yield wait_for(lambda: rig.ic.gate.waiting(KEY) == 0, what="the call no longer held")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}
    rig.load()
    assert (yield call(c.echo, b"warm", timeout=DEADLINE)) == b"warm"
    assert [m for m, _, _ in rig.server.calls] == ["Echo"]  # the late call never went out


@pytest_twisted.inlineCallbacks
def test_cancel_mid_stream_reaches_the_server_and_releases_the_request(rig):
    rig.start()
    c = rig.client()

    def first_message():
        stream = c.drip(b"cancel-token", timeout=DEADLINE * 2)
        return stream, next(stream)

    stream, first = yield call(first_message)
    assert first == b"first"
    yield wait_for(lambda: b"cancel-token" in rig.server.waiting, what="the server waiting")
    assert (yield rig.queue())[KEY] == {"Concurrency": 1, "RequestCount": 1}
    yield call(stream.cancel)
    yield wait_for(lambda: b"cancel-token" in rig.server.cancelled,
                   what="the server to see the cancel")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}
    code, _ = yield call(status_of, lambda: list(stream))
    assert code == grpc.StatusCode.CANCELLED


@pytest_twisted.inlineCallbacks
def test_client_connection_lost_mid_stream_ends_the_call_upstream(rig):
    """The client's connection goes (no RST_STREAM first): every stream on
    it ends upstream too."""
    rig.start()
    c = rig.client()

    def first_message(token):
        stream = c.drip(token, timeout=DEADLINE * 2)
        return stream, next(stream)

    streams = []  # grpc cancels a call whose object is collected
    for token in (b"lost-1", b"lost-2"):
        streams.append((yield call(first_message, token)))
    yield wait_for(lambda: len(rig.server.waiting) == 2, what="the server waiting")
    yield call(c.close)
    yield wait_for(lambda: sorted(rig.server.cancelled) == [b"lost-1", b"lost-2"],
                   what="the server to see both calls end")
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 2}


@pytest_twisted.inlineCallbacks
def test_drain_lets_a_stream_in_flight_finish(rig):
    """The interceptor drains (GOAWAY): a bidi stream already open goes on
    both ways and ends with OK."""
    rig.start()
    c = rig.client()
    outgoing = queue.Queue()
    responses = c.echo_each(iter(outgoing.get, None), timeout=DEADLINE)
    outgoing.put(b"before")
    assert (yield call(next, responses)) == b"before"
    rig.proxy_factory.draining = True
    outgoing.put(b"after")
    assert (yield call(next, responses)) == b"after"
    outgoing.put(None)
    assert (yield call(list, responses)) == []
    assert responses.code() == grpc.StatusCode.OK
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


# -- size, cold start, TLS, many calls ------------------------------------------

@pytest_twisted.inlineCallbacks
def test_8_mib_messages_each_way(rig):
    rig.start()
    c = rig.client()
    payload = os.urandom(8 * 1024 * 1024)
    response = yield call(c.big, payload, timeout=60)
    assert len(response) == len(payload)
    assert response == payload[::-1]
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@inlineCallbacks
def steady(value, quiet=0.2, timeout=15.0):
    """Wait until C{value()} has not changed for C{quiet} seconds; return it."""
    last, since = value(), reactor.seconds()
    deadline = since + timeout
    while reactor.seconds() - since < quiet:
        if reactor.seconds() > deadline:
            raise AssertionError(f"still changing after {timeout}s: {last}")
        yield deferLater(reactor, 0.02, lambda: None)
        now = value()
        if now != last:
            last, since = now, reactor.seconds()
    return last


@pytest_twisted.inlineCallbacks
def test_a_client_that_reads_nothing_holds_the_server_back(rig):
    """Flow control end to end: while the client reads nothing, the server
    gets only as far as the windows and buffers on the way allow, nowhere
    near the 64 MiB it has to send; then all of it arrives."""
    rig.start()
    c = rig.client()

    def first_message():
        stream = c.flood(b"64:%d" % (1 << 20), timeout=DEADLINE * 3)
        return stream, next(stream)

    stream, first = yield call(first_message)
    assert len(first) == 1 << 20
    held_back = yield steady(lambda: rig.server.flooded)
    assert held_back < 32
    rest = yield call(lambda: sum(1 for _ in stream))
    assert (rest, rig.server.flooded) == (63, 64)
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_a_server_that_reads_nothing_holds_the_client_back(rig):
    """The other way: while the server reads nothing, the client gets only
    so far through its 64 MiB; then all of it arrives."""
    rig.start()
    c = rig.client()
    pulled = []

    def messages():
        for i in range(64):
            pulled.append(i)
            yield b"m" * (1 << 20)

    d = call(c.gated, messages(), timeout=DEADLINE * 3)
    yield wait_for(lambda: rig.server.calls, what="the call at the server")
    held_back = yield steady(lambda: len(pulled))
    assert held_back < 32
    rig.server.gate.set()
    assert (yield d) == b"64"
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_cold_start_holds_the_call_until_the_endpoints_are_ready(rig):
    rig.start(ready=False)
    c = rig.client()

    def unary():
        response, done = c.echo.with_call(b"cold", timeout=DEADLINE)
        return response, dict(done.initial_metadata())

    d = call(unary)
    yield wait_for(lambda: rig.ic.gate.waiting(KEY) == 1, what="the call held")
    assert rig.server.calls == []
    assert (yield rig.queue())[KEY] == {"Concurrency": 1, "RequestCount": 1}
    rig.load()
    response, initial = yield d
    assert response == b"cold"
    assert initial["x-keda-http-cold-start"] == "true"
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_grpc_over_tls_to_a_pod_ip_verifies_the_service_name(rig):
    """h2 by ALPN on both legs; the pod is dialled by IP (direct-pod
    routing) and its certificate, for ``grpc.default`` only, checked
    against the Service's name."""
    rig.start(tls_upstream=True, direct_pod_routing=True)
    c = rig.tls_client()
    assert (yield call(c.echo, b"secure", timeout=DEADLINE)) == b"secure"
    got, status = yield call(stream_and_status, c.count, b"2:ABORTED:over tls",
                             timeout=DEADLINE)
    assert (got, status) == ([b"0", b"1"], (grpc.StatusCode.ABORTED, "over tls"))
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 2}


@pytest_twisted.inlineCallbacks
def test_grpc_over_tls_to_a_pod_with_another_name_is_refused(rig):
    """The same, the pod's certificate naming another Service: the call
    fails (the proxy's 502 is UNAVAILABLE to gRPC) and never reaches it."""
    rig.start(tls_upstream=True, pod_name="evil.default", direct_pod_routing=True)
    c = rig.tls_client()
    code, _ = yield call(status_of, c.echo, b"secure", timeout=DEADLINE)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert rig.server.calls == []
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_twenty_calls_on_one_channel_are_twenty_requests(rig):
    """Concurrent calls on one connection, each its own stream: each
    counted once in ``/queue`` and in ``/metrics``."""
    rig.start()
    c = rig.client()

    def twenty():
        pending = [c.echo.future(b"call %d" % i, timeout=DEADLINE) for i in range(20)]
        return [f.result(timeout=DEADLINE) for f in pending]

    got = yield call(twenty)
    assert got == [b"call %d" % i for i in range(20)]
    assert rig.connections == 1
    assert (yield rig.settled()) == {"Concurrency": 0, "RequestCount": 20}
    yield wait_for(lambda: len(rig.server.calls) == 20, what="20 calls at the server")
    assert (yield rig.request_count()) == 20

