"""
Request bodies that trickle in are cut (keda_proxy.downstream.BODY_GRACE and
BODY_MIN_RATE): a client must not hold a request, and the route's
Concurrency that drives KEDA's scaling, open for as long as it likes.
"""

import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.python.failure import Failure

from keda_proxy.downstream._http1 import BODY_GRACE, BODY_MIN_RATE, HTTP1ServerProtocol
from tests.netsupport import RawClient, wait_for
from tests.proxyfakes import Harness, status_line
from tests.test_integration import Rig
from tests.test_proxy import warm


def _upload(length: int):
    h = Harness()
    warm(h)
    proto, t = h.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n"
                      % length)
    return h, proto, t


def _concurrency(h):
    return h.counter.get("default/web").concurrency


def test_a_trickled_body_is_cut_with_408_and_the_count_released():
    h, proto, t = _upload(1000)
    up = h.upstream()
    for _ in range(6):  # a byte every 5 s: far below the minimum rate
        proto.dataReceived(b"x")
        h.clock.advance(5)
    assert not t.disconnecting and _concurrency(h) == 1
    h.clock.advance(1)  # 31 s in, with 6 bytes bought 12 ms
    assert status_line(t) == b"HTTP/1.1 408 Request Timeout"
    assert t.disconnecting
    proto.connectionLost(Failure(ConnectionError()))  # the close lands
    assert _concurrency(h) == 0
    assert up.transport.disconnecting or up.transport.disconnected


def test_a_body_at_the_minimum_rate_is_never_cut():
    rate = int(BODY_MIN_RATE)
    h, proto, t = _upload(rate * 120)
    h.upstream()
    for _ in range(120):  # two minutes, at the rate exactly
        proto.dataReceived(b"x" * rate)
        h.clock.advance(1)
    assert not t.disconnecting
    assert h.clock.getDelayedCalls() == [] or all(
        c.getTime() > h.clock.seconds() for c in h.clock.getDelayedCalls())


def test_a_silent_body_gets_its_grace_and_no_more():
    h, proto, t = _upload(10)
    h.clock.advance(BODY_GRACE - 0.1)
    assert not t.disconnecting
    h.clock.advance(0.2)
    assert status_line(t) == b"HTTP/1.1 408 Request Timeout"


def test_time_the_proxy_holds_the_client_back_does_not_count():
    h, proto, t = _upload(1000)
    h.upstream()
    proto.dataReceived(b"x")
    body = h.exchange.body
    body.pauseProducing()  # the upstream's socket is full
    for _ in range(17):  # 170 s, past the 60 s idle timeout too
        h.clock.advance(10)
    assert not t.disconnecting
    body.resumeProducing()
    for _ in range(29):
        h.clock.advance(1)
    assert not t.disconnecting  # a fresh grace, and idle time, from the resume
    h.clock.advance(2)
    assert status_line(t) == b"HTTP/1.1 408 Request Timeout"


def test_a_body_cut_after_the_response_began_is_a_reset_not_a_408():
    h, proto, t = _upload(1000)
    up = h.upstream()
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nearly")
    h.clock.advance(BODY_GRACE + 1)
    assert b"408" not in t.value()
    assert t.disconnecting  # StringTransport's abortConnection


def test_a_finished_body_leaves_no_timer_behind():
    h, proto, t = _upload(5)
    up = h.upstream()
    proto.dataReceived(b"hello")
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.clock.advance(BODY_GRACE + 1)
    assert not t.disconnecting and status_line(t) == b"HTTP/1.1 200 OK"


@pytest_twisted.inlineCallbacks
def test_trickling_clients_over_real_sockets_are_cut_and_uncounted(monkeypatch):
    monkeypatch.setattr(HTTP1ServerProtocol, "body_grace", 0.3)
    rig = Rig().start()
    try:
        rig.load()
        port = rig.proxy_port.getHost().port
        clients = []
        for _ in range(20):
            c = yield RawClient.connect(port)
            c.transport.write(b"POST /held HTTP/1.1\r\nHost: web.example\r\n"
                              b"Content-Length: 100\r\n\r\nx")
            clients.append(c)
        yield wait_for(lambda: all(c.received for c in clients), what="every client cut")
        assert all(c.received.startswith(b"HTTP/1.1 408 ") for c in clients)
        yield wait_for(lambda: rig.ic.counter.get("default/web").concurrency == 0,
                       what="Concurrency back to 0")
        yield gatherResults([c.lost for c in clients])
    finally:
        yield rig.stop()
