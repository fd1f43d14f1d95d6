"""
In-memory harness for the proxy pipeline: the real server protocol and the real
upstream client protocol and pool, over C{StringTransport}s, on a
C{MemoryReactorClock}.  Dialling is faked at the endpoint: each dial waits
until the test lets it succeed or fail.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from keda_proxy.downstream import HTTP1ServerFactory
from keda_proxy.state._store import StateStore
from keda_proxy.steps import Pipeline, ProxySettings
from keda_proxy.steps._counting import QueueCounter
from keda_proxy.steps._pluginrouting import PluginRouter
from keda_proxy.steps._readiness import ReadinessGate
from keda_proxy.upstream._pool import ConnectionPool


class Upstream:
    """One dialled upstream connection, as the test sees it."""

    def __init__(self, dial, protocol, transport):
        self.dial = dial
        self.protocol = protocol
        self.transport = transport

    @property
    def key(self):
        return self.dial.key

    def sent(self) -> bytes:
        return self.transport.value()

    def request_line(self) -> bytes:
        return self.sent().split(b"\r\n", 1)[0]

    def request_headers(self) -> dict:
        return head_fields(self.sent())

    def respond(self, raw: bytes):
        self.protocol.dataReceived(raw)

    def close(self, reason=None):
        self.transport.disconnecting = True
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class PendingDial:
    def __init__(self, key, budget, factory):
        self.key = key
        self.budget = budget
        self.factory = factory
        self.cancelled = False
        self.deferred = Deferred(self._cancel)

    def _cancel(self, d):
        self.cancelled = True

    def succeed(self) -> Upstream:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.deferred.callback(proto)
        return Upstream(self, proto, transport)

    def fail(self, exc):
        self.deferred.errback(Failure(exc))


class _FakeEndpoint:
    def __init__(self, dials, key, budget):
        self.dials = dials
        self.key = key
        self.budget = budget

    def connect(self, factory):
        dial = PendingDial(self.key, self.budget, factory)
        self.dials.append(dial)
        return dial.deferred


class FakeEndpoints:
    def __init__(self):
        self.dials: list[PendingDial] = []

    def endpoint_for(self, key, budget):
        return _FakeEndpoint(self.dials, key, budget)


class Harness:
    """A complete pipeline on a MemoryReactorClock with faked dialling."""

    def __init__(self, settings=ProxySettings(), plugins=()):
        self.clock = MemoryReactorClock()
        self.store = StateStore(clock=self.clock)
        self.counter = QueueCounter()
        self.store.subscribe(lambda old, new: self.counter.sync_keys(new.routes.keys()))
        self.gate = ReadinessGate(self.store)
        self.endpoints = FakeEndpoints()
        self.pool = ConnectionPool(self.clock, self.endpoints.endpoint_for)
        self.pipeline = Pipeline(
            clock=self.clock, store=self.store,
            router=PluginRouter.with_plugins(self.store, plugins),
            counter=self.counter, gate=self.gate, pool=self.pool,
            settings=settings)
        self.site = HTTP1ServerFactory(self.serve, reactor=self.clock)
        #: the last request served (an L{keda_proxy.downstream.HTTP1Exchange})
        self.exchange = None

    def serve(self, downstream):
        """The factory's handler: the pipeline of the moment (a test may
        swap it)."""
        self.exchange = downstream
        self.pipeline.serve(downstream)

    @property
    def dials(self):
        return self.endpoints.dials

    def upstream(self, i=-1) -> Upstream:
        """Let dial C{i} succeed and return the connection."""
        return self.dials[i].succeed()

    def connect(self):
        proto = self.site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555),
                                    hostAddress=IPv4Address("TCP", "10.0.0.1", 8080))
        proto.makeConnection(transport)
        return proto, transport

    def send(self, raw: bytes):
        proto, transport = self.connect()
        proto.dataReceived(raw)
        return proto, transport

    def get(self, path=b"/", host=b"example.com", extra=b""):
        return self.send(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")


def status_line(transport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


def head_fields(raw: bytes) -> dict:
    """The header fields of the first message in C{raw}: lower-case name ->
    values in order."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    out: dict = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def response_headers(transport) -> dict:
    return head_fields(transport.value())


def response_body(transport) -> bytes:
    return transport.value().split(b"\r\n\r\n", 1)[1]


OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
