"""
Writes that go straight to the socket while nothing is queued
(keda_proxy.wire._sendnow), on real TCP transports of a private reactor
that is never run: a write that needs the reactor would stay unsent.
"""

import os
import socket
import sys

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from keda_proxy.wire._sendnow import SendNow

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll")


@pytest.fixture
def reactor():
    from twisted.internet.epollreactor import EPollReactor

    r = EPollReactor()
    yield r
    os.close(r.waker.i)
    os.close(r.waker.o)


@pytest.fixture
def pair(reactor):
    """A tcp.Server transport over one end of a connected TCP pair, and the
    other end as a plain blocking socket."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname())
        ours, addr = listener.accept()
    ours.setblocking(False)
    transport = tcp.Server(ours, Protocol(), addr, None, 1, reactor)
    transport.connected = True
    yield transport, peer
    peer.close()
    ours.close()


def received(peer, n):
    peer.settimeout(2)
    got = b""
    while len(got) < n:
        got += peer.recv(1 << 20)
    return got


def test_a_write_is_on_the_wire_when_write_returns(reactor, pair):
    transport, peer = pair
    SendNow(transport).write(b"hello")
    assert received(peer, 5) == b"hello"
    assert reactor.getWriters() == []  # nothing was left for the reactor


def test_what_the_kernel_refuses_is_queued_and_everything_after_it_too(reactor, pair):
    transport, peer = pair
    sender = SendNow(transport)
    big = bytes(range(256)) * 40_000  # more than the socket buffers take
    sender.write(big)
    assert transport in reactor.getWriters()  # the rest waits for the reactor
    sender.write(b"after")  # must not overtake the queued part
    assert transport in reactor.getWriters()
    peer.setblocking(False)
    got = bytearray()
    while len(got) < len(big) + 5:  # turn the reactor by hand until all is out
        reactor.doIteration(0.01)
        try:
            got.extend(peer.recv(1 << 20))
        except BlockingIOError:
            pass
    assert bytes(got) == big + b"after"


def test_a_closing_transport_gets_the_write(pair):
    transport, peer = pair
    transport.disconnecting = True
    seen = []
    transport.write = seen.append  # the transport decides what a late write does
    SendNow(transport).write(b"late")
    assert seen == [b"late"]


def test_tls_and_in_memory_transports_always_take_the_normal_path(pair):
    memory = StringTransport()
    SendNow(memory).write(b"x")
    assert memory.value() == b"x"

    transport, _ = pair

    @implementer(ISSLTransport, ISystemHandle)
    class FakeTLS(StringTransport):
        """A TLS transport over a plain socket: its bytes must be encrypted."""

        def getHandle(self):
            return transport.getHandle()

    tls = FakeTLS()
    SendNow(tls).write(b"secret")
    assert tls.value() == b"secret"
