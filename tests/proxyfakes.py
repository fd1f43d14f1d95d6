"""
In-memory fakes for driving the proxy pipeline without sockets: an
C{IAgent} whose responses the test controls, and a harness that feeds raw
HTTP into the real Site over a C{StringTransport}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from keda_proxy.app import ProxySite
from keda_proxy.counting import QueueCounter
from keda_proxy.pluginrouting import PluginRouter
from keda_proxy.proxy import Pipeline, ProxySettings, ReverseProxy
from keda_proxy.readiness import ReadinessGate
from keda_proxy.store import StateStore


class FakeUpstreamTransport:
    def __init__(self):
        self.paused = False
        self.stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


class FakeResponse:
    def __init__(self, code=200, phrase=b"OK", headers=None):
        self.code = code
        self.phrase = phrase
        self.headers = Headers(headers or {})
        self.length = None
        self.protocol = None
        self.transport = FakeUpstreamTransport()

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def push(self, data: bytes):
        self.protocol.dataReceived(data)

    def end(self, reason=None):
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


class PendingRequest:
    def __init__(self, method, uri, headers, body):
        self.method, self.uri, self.headers, self.body = method, uri, headers, body
        self.cancelled = False
        self.deferred = Deferred(self._cancel)

    def _cancel(self, d):
        self.cancelled = True
        d.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

    def respond(self, code=200, phrase=b"OK", headers=None) -> FakeResponse:
        resp = FakeResponse(code, phrase, headers)
        self.deferred.callback(resp)
        return resp


@implementer(IAgent)
class FakeAgent:
    def __init__(self):
        self.requests: list[PendingRequest] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        pending = PendingRequest(method, uri, headers, bodyProducer)
        self.requests.append(pending)
        return pending.deferred


class Harness:
    """A complete pipeline on a MemoryReactorClock with a FakeAgent."""

    def __init__(self, settings=ProxySettings(), plugins=()):
        self.clock = MemoryReactorClock()
        self.store = StateStore(clock=self.clock)
        self.counter = QueueCounter()
        self.store.subscribe(lambda old, new: self.counter.sync_keys(new.routes.keys()))
        self.gate = ReadinessGate(self.store)
        self.agent = FakeAgent()
        self.pipeline = Pipeline(
            clock=self.clock, store=self.store,
            router=PluginRouter.with_plugins(self.store, plugins),
            counter=self.counter, gate=self.gate, agent=self.agent,
            cooperator=Cooperator(scheduler=lambda f: self.clock.callLater(0, f)),
            settings=settings)
        self.site = ProxySite(ReverseProxy(self.pipeline), reactor=self.clock)

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


def response_headers(transport) -> Headers:
    head = transport.value().split(b"\r\n\r\n", 1)[0]
    h = Headers()
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        h.addRawHeader(name, value.strip())
    return h


def response_body(transport) -> bytes:
    return transport.value().split(b"\r\n\r\n", 1)[1]
