"""
Byte tunnels for upgraded connections (WebSockets).

After an upstream answers ``101 Switching Protocols``, HTTP is over on both
legs: the proxy writes the 101 head to the client, takes the client's
transport away from twisted.web's channel, and copies bytes both ways with
flow control until either side closes, which closes the other.  The
route's request stays counted in ``/queue`` for as long as the tunnel is
open.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class _ClientSide(Protocol):
    """Takes the client transport's events once the tunnel is open."""

    def __init__(self, tunnel: "Tunnel"):
        self.tunnel = tunnel

    def dataReceived(self, data):
        self.tunnel.client_data(data)

    def connectionLost(self, reason=None):
        self.tunnel.client_lost(reason or Failure(ConnectionDone()))


class Tunnel:
    def __init__(self, exchange, conn, client_transport):
        self.exchange = exchange
        self.conn = conn
        self.client = client_transport
        self.closed = False

    @classmethod
    def open(cls, exchange, conn, rest: bytes) -> "Tunnel":
        req = exchange.request
        channel = req.channel
        transport = channel.transport
        tunnel = cls(exchange, conn, transport)
        conn.tunnel = tunnel
        head = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        for line in exchange._head.lines if exchange._head is not None else ():
            head += (line, b"\r\n")  # all of them, Upgrade and Connection too
        head.append(b"\r\n")
        # Detach twisted.web: no more parsing, no idle timeout, no producer.
        channel.setTimeout(None)
        pending = b"".join(getattr(channel, "_dataBuffer", [])) + \
            getattr(channel, "_buffer", b"")
        channel._dataBuffer = []
        channel.clearLineBuffer()
        transport.unregisterProducer()
        side = _ClientSide(tunnel)
        if hasattr(transport, "wrappedProtocol"):  # TLS
            transport.wrappedProtocol = side
        else:
            transport.protocol = side
        side.makeConnection = None  # the transport is already connected
        transport.write(b"".join(head))
        if rest:
            transport.write(rest)
        # flow control, both ways
        transport.registerProducer(conn.transport, True)
        conn.transport.registerProducer(transport, True)
        if pending:
            conn.transport.write(pending)
        transport.resumeProducing()
        return tunnel

    # client -> upstream
    def client_data(self, data: bytes) -> None:
        if not self.closed:
            self.conn.transport.write(data)

    def client_lost(self, reason) -> None:
        self._close(reason, close_upstream=True)

    # upstream -> client
    def upstream_data(self, data: bytes) -> None:
        if not self.closed:
            self.client.write(data)

    def upstream_lost(self, reason) -> None:
        self._close(reason, close_client=True)

    def _close(self, reason, close_client=False, close_upstream=False) -> None:
        if self.closed:
            return
        self.closed = True
        if close_upstream and self.conn.transport is not None:
            self.conn.transport.loseConnection()
        if close_client:
            self.client.loseConnection()
        # end the request's life: releases its /queue count, records metrics
        req = self.exchange.request
        if not req._disconnected:
            req.connectionLost(reason)
