"""
Byte tunnels for upgraded connections (WebSockets).

After an upstream answers ``101 Switching Protocols``, HTTP is over on both
legs: the proxy takes the client's transport over from its protocol,
writes the 101 head to the client, and copies bytes both ways with
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
    def __init__(self, context, conn, client_transport):
        self.context = context
        self.conn = conn
        self.client = client_transport
        self.closed = False

    @classmethod
    def open(cls, context, head, conn, rest: bytes) -> "Tunnel":
        """Take the client's connection over from its protocol, send it
        the upstream's 101 with all its header lines (Upgrade and
        Connection too), and copy bytes both ways."""
        transport, pending = context.downstream.take_over()
        tunnel = cls(context, conn, transport)
        conn.tunnel = tunnel
        lines = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        for line in head.lines if head is not None else ():
            lines += (line, b"\r\n")
        lines.append(b"\r\n")
        side = _ClientSide(tunnel)
        if hasattr(transport, "wrappedProtocol"):  # TLS
            transport.wrappedProtocol = side
        else:
            transport.protocol = side
        transport.write(b"".join(lines))
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
        # the exchange ends: its /queue count is released, metrics recorded
        self.context.downstream.finish()
