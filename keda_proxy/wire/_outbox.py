"""
Writes sent straight to the socket, and within a busy reactor turn
collected and sent at its end, one send per connection.

Twisted's C{transport.write} always queues and asks the reactor to watch
the socket for writability: two C{epoll_ctl} calls and one more trip round
the reactor for every message, about as much as the rest of a small
request costs.  A protocol that is the only writer of its plain TCP
connection can send to the socket itself (L{ISystemHandle.getHandle},
public) for as long as nothing it wrote has been queued.

When: a send to a peer that sleeps in C{epoll_wait} also wakes it, and on
loopback or the same host the waking is about a third of the send (perf,
during a cold-start release).  The first write of a turn goes out at once,
so that its peer starts on it while the turn goes on (alone in its turn,
as at one connection, it would otherwise wait for the turn to end, and the
peer would find this process asleep when it answers).  The turn's later
writes wait for its end and go out together: a peer gets its messages in
one burst and is woken about once, and a connection written to twice gets
one send.  The end of the turn is a C{callLater(0)}: it runs right after
the turn's events, before the reactor polls again (or, for writes made by
a timed call, right after the next poll).

The first time the kernel takes less than everything, the rest goes to
C{transport.write}, and so does everything after it on that connection,
flow control included.  TLS transports, and anything that is not a plain
socket, take the normal path at once.  A protocol that closes its
connection or hands its transport to another writer calls
L{Writer.lose} or L{Writer.flush} first, so that nothing is overtaken.
"""

from __future__ import annotations

import _socket
import socket
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.logger import Logger

_log = Logger()


class Outbox:
    """The connections of one reactor with bytes waiting for the end of the
    turn, in the order they were first written to."""

    __slots__ = ("_clock", "_waiting", "_call", "__weakref__")

    def __init__(self, clock):
        self._clock = clock
        self._waiting: list = []
        self._call = None

    def busy(self) -> bool:
        """Whether this turn has written already; if not, it now has."""
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)
            return False
        return True

    def add(self, writer: "Writer") -> None:
        """C{writer} has bytes for the end of the turn (L{busy} said so)."""
        self._waiting.append(writer)

    def flush(self) -> None:
        """Send everything waiting (the end of the turn)."""
        self._call = None
        waiting, self._waiting = self._waiting, []
        for writer in waiting:
            try:
                writer.flush()
            except Exception:
                # one connection's bug must not keep the others' bytes
                _log.failure("Unhandled error sending to {transport!r}",
                             transport=writer.transport)
                writer.transport.abortConnection()


_outboxes: "WeakKeyDictionary[object, Outbox]" = WeakKeyDictionary()


def outbox_for(clock) -> Outbox:
    """The one outbox of this reactor: one flush per turn for all its
    connections."""
    box = _outboxes.get(clock)
    if box is None:
        box = _outboxes[clock] = Outbox(clock)
    return box


class Writer:
    """The writes of one connection (see module doc)."""

    __slots__ = ("transport", "_socket", "_outbox", "_pending")

    def __init__(self, transport, clock):
        self.transport = transport
        self._socket = sock = _plain_socket(transport)
        self._outbox = outbox_for(clock) if sock is not None else None
        #: bytes, or a list of them, waiting for the end of the turn
        self._pending = None

    def write(self, data: bytes) -> None:
        if self._socket is None:
            self.transport.write(data)
            return
        if not data:
            return
        pending = self._pending
        if pending is None:
            outbox = self._outbox
            if outbox.busy():
                self._pending = data
                outbox.add(self)
            else:
                self._send(data)  # the turn's first write
        elif type(pending) is list:
            pending.append(data)
        else:
            self._pending = [pending, data]

    def flush(self) -> None:
        """Send what is waiting now: the end of the turn, or before the
        connection is closed or handed over."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._send(b"".join(pending) if type(pending) is list else pending)

    def _send(self, data: bytes) -> None:
        transport = self.transport
        if transport.disconnecting or not transport.connected:
            transport.write(data)  # the transport decides what a late write does
            return
        try:
            sent = self._socket.send(data)
        except OSError:
            # full (would block), or broken: the transport takes it from
            # here and notices either
            sent = 0
        if sent != len(data):
            self._socket = None  # something is queued now: keep the order
            transport.write(data[sent:] if sent else data)

    def lose(self) -> None:
        """Close the connection after what was written."""
        self.flush()
        self.transport.loseConnection()


def _plain_socket(transport):
    """The connection's own socket, or None when writing to it directly
    would be wrong (TLS) or is not possible."""
    if ISSLTransport.providedBy(transport) or not ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket) or _socket_type(handle) != socket.SOCK_STREAM:
        return None
    return handle


#: a socket's type as a plain number (C{socket.type} makes an enum of it,
#: a good part of setting up a writer)
_socket_type = _socket.socket.type.__get__
