"""
Send at once, queue only what the kernel refuses.

Twisted's C{transport.write} always queues and asks the reactor to watch
the socket for writability: two C{epoll_ctl} calls and one more trip round
the reactor for every message, which for a proxy's small messages costs
about as much as the rest of the request (measured: 1.4x the requests per
second at 32 connections, see docs/performance.md).  A protocol that is
the only writer of its plain TCP connection can send straight to the
socket (L{ISystemHandle.getHandle}, public) for as long as nothing it
wrote has been queued: the order of bytes is kept.  The first time the
kernel takes less than everything, the rest goes to C{transport.write},
and so does everything after it on that connection, flow control
included.  TLS transports, and anything that is not a plain socket, take
the normal path.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ISSLTransport, ISystemHandle


class SendNow:
    """The writes of one connection (see module doc)."""

    __slots__ = ("transport", "_socket")

    def __init__(self, transport):
        self.transport = transport
        self._socket = _plain_socket(transport)

    def write(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None and data:
            if getattr(self.transport, "disconnecting", False):
                self._socket = sock = None  # closing: the transport decides
            else:
                try:
                    sent = sock.send(data)
                except OSError:
                    # full (would block), or broken: the transport takes it
                    # from here and notices either
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
                self._socket = None  # something is queued now: keep the order
        self.transport.write(data)


def _plain_socket(transport):
    """The connection's own socket, or None when writing to it directly
    would be wrong (TLS) or is not possible."""
    if ISSLTransport.providedBy(transport) or not ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket) or handle.type != socket.SOCK_STREAM:
        return None
    return handle
