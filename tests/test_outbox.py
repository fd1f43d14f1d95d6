"""
Writes collected over a reactor turn and sent at its end
(keda_proxy.wire._outbox), on real TCP transports of a private reactor
that is never run, with a Clock for the turn's end: a write that needs the
reactor would stay unsent.
"""

import os
import socket
import sys

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from keda_proxy.wire._outbox import Writer, outbox_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll")


@pytest.fixture
def reactor():
    from twisted.internet.epollreactor import EPollReactor

    r = EPollReactor()
    yield r
    os.close(r.waker.i)
    os.close(r.waker.o)


def _pair(reactor):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname())
        ours, addr = listener.accept()
    ours.setblocking(False)
    peer.setblocking(False)
    transport = tcp.Server(ours, Protocol(), addr, None, 1, reactor)
    transport.connected = True
    return transport, peer


@pytest.fixture
def pairs(reactor):
    """Connected TCP pairs: a tcp.Server transport over one end, and the
    other end as a plain non-blocking socket."""
    made = []

    def make():
        transport, peer = _pair(reactor)
        made.append((transport.getHandle(), peer))
        return transport, peer

    yield make
    for ours, peer in made:
        peer.close()
        ours.close()


def available(peer) -> bytes:
    """What the peer has received so far."""
    got = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def busy_turn(clock, pairs):
    """A turn that has written already: later writes wait for its end."""
    transport, peer = pairs()
    Writer(transport, clock).write(b"first")
    assert available(peer) == b"first"
    return clock


def test_the_first_write_of_a_turn_goes_out_at_once(reactor, pairs):
    clock = Clock()
    transport, peer = pairs()
    Writer(transport, clock).write(b"hello")
    assert available(peer) == b"hello"
    assert reactor.getWriters() == []  # nothing was left for the reactor
    assert len(clock.getDelayedCalls()) == 1  # the turn's end, for later writes


def test_later_writes_wait_for_the_end_of_the_turn_then_go_out_in_order(reactor, pairs):
    clock = Clock()
    (t1, p1), (t2, p2) = pairs(), pairs()
    w1, w2 = Writer(t1, clock), Writer(t2, clock)
    w1.write(b"zero ")  # the turn's first: at once
    w1.write(b"one ")
    w2.write(b"two")
    w1.write(b"three")
    assert available(p1) == b"zero " and available(p2) == b""
    assert len(clock.getDelayedCalls()) == 1  # one end-of-turn call for all
    clock.advance(0)
    assert available(p1) == b"one three"
    assert available(p2) == b"two"
    assert reactor.getWriters() == []
    assert clock.getDelayedCalls() == []


def test_the_next_turn_starts_afresh(pairs):
    clock = Clock()
    transport, peer = pairs()
    writer = Writer(transport, clock)
    writer.write(b"a")
    writer.write(b"b")
    clock.advance(0)
    assert available(peer) == b"ab"
    writer.write(b"c")  # a new turn's first write
    assert available(peer) == b"c"


def test_what_the_kernel_refuses_is_queued_and_everything_after_it_too(reactor, pairs):
    clock = Clock()
    transport, peer = pairs()
    writer = Writer(transport, clock)
    big = bytes(range(256)) * 40_000  # more than the socket buffers take
    writer.write(big)
    clock.advance(0)
    assert transport in reactor.getWriters()  # the rest waits for the reactor
    writer.write(b"after")  # must not overtake the queued part
    assert clock.getDelayedCalls() == []  # straight to the transport's queue
    got = bytearray()
    while len(got) < len(big) + 5:  # turn the reactor by hand until all is out
        reactor.doIteration(0.01)
        got.extend(available(peer))
    assert bytes(got) == big + b"after"


def test_lose_sends_what_waits_before_the_close(reactor, pairs):
    clock = busy_turn(Clock(), pairs)
    transport, peer = pairs()
    transport.protocol.makeConnection(transport)
    writer = Writer(transport, clock)
    writer.write(b"last words")
    writer.lose()
    assert transport.disconnecting
    got = b""
    for _ in range(100):
        reactor.doIteration(0.01)
        got += available(peer)
        if not transport.connected:
            break
    got += available(peer)
    assert got == b"last words"
    assert not transport.connected  # and the close followed
    clock.advance(0)  # the turn's end finds nothing left
    assert available(peer) == b""


def test_flush_sends_at_once(pairs):
    clock = busy_turn(Clock(), pairs)
    transport, peer = pairs()
    writer = Writer(transport, clock)
    writer.write(b"now")
    assert available(peer) == b""
    writer.flush()
    assert available(peer) == b"now"


def test_a_closing_transport_gets_the_write(pairs):
    clock = busy_turn(Clock(), pairs)
    transport, _ = pairs()
    seen = []
    transport.write = seen.append  # the transport decides what a late write does
    writer = Writer(transport, clock)
    writer.write(b"late")
    transport.disconnecting = True
    clock.advance(0)
    assert seen == [b"late"]


def test_one_connections_failure_does_not_keep_the_others_bytes(pairs):
    clock = busy_turn(Clock(), pairs)
    (t1, _), (t2, p2) = pairs(), pairs()
    aborted = []
    t1.abortConnection = lambda: aborted.append(t1)
    broken, fine = Writer(t1, clock), Writer(t2, clock)

    class Exploding:
        def send(self, data):
            raise RuntimeError("a bug")

    broken._socket = Exploding()
    broken.write(b"x")
    fine.write(b"y")
    clock.advance(0)
    assert available(p2) == b"y"
    assert aborted == [t1]


def test_one_outbox_per_reactor():
    a, b = Clock(), Clock()
    assert outbox_for(a) is outbox_for(a)
    assert outbox_for(a) is not outbox_for(b)


def test_tls_and_in_memory_transports_always_take_the_normal_path(pairs):
    clock = Clock()
    memory = StringTransport()
    Writer(memory, clock).write(b"x")
    assert memory.value() == b"x"

    transport, _ = pairs()

    @implementer(ISSLTransport, ISystemHandle)
    class FakeTLS(StringTransport):
        """A TLS transport over a plain socket: its bytes must be encrypted."""

        def getHandle(self):
            return transport.getHandle()

    tls = FakeTLS()
    Writer(tls, clock).write(b"secret")
    assert tls.value() == b"secret"
    assert clock.getDelayedCalls() == []


def test_a_handle_that_is_not_a_stream_socket_takes_the_normal_path():
    """A datagram socket's sends are messages: joining two writes into one
    send would change them."""
    clock = Clock()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:

        @implementer(ISystemHandle)
        class OverUDP(StringTransport):
            def getHandle(self):
                return udp

        transport = OverUDP()
        Writer(transport, clock).write(b"datagram")
        assert transport.value() == b"datagram"
        assert clock.getDelayedCalls() == []
