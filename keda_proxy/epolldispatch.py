"""
The epoll reactor, dispatching each event without the legacy log context.

For every ready socket, Twisted's epoll reactor asks the selectable for its
log prefix, copies the legacy log context dictionary with it, and calls
through three wrappers before C{doRead}: about 5% of the proxy's work per
request (two socket events) in profiles.  The prefix only names the
"system" of old-style C{log.msg} lines; the proxy logs with
C{twisted.logger}, so this reactor calls the same C{_doReadOrWrite} step
directly and still logs anything that escapes it.  A plain read on a TCP
connection, most events by far, runs that step's read path inline.

C{lean_dispatch(reactor)} switches an installed L{EPollReactor} (twistd's
default on Linux) over in place; any other reactor is left as it is.
"""

from __future__ import annotations

import sys
from errno import EWOULDBLOCK
from select import EPOLLIN

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.tcp import Client, Server
from twisted.logger import Logger

_log = Logger()

#: the transports whose reads take the inlined path (exactly these types:
#: a subclass may read differently)
_PLAIN_TCP = (Server, Client)


class LeanEPollReactor(EPollReactor):
    """L{EPollReactor} with a direct dispatch loop."""

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait indefinitely
        # EINTR is retried by Python itself (PEP 475); anything else is a
        # programming error, raised loudly as the stock reactor does
        events = self._poller.poll(timeout, len(self._selectables))
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == EPOLLIN and type(selectable) in _PLAIN_TCP:
                # the common event, a TCP connection with bytes to read:
                # C{_doReadOrWrite}, C{doRead} and C{_dataReceived} inlined,
                # with the same outcomes
                try:
                    data = selectable.socket.recv(selectable.bufferSize)
                except OSError as e:
                    if e.errno != EWOULDBLOCK:
                        self._disconnectSelectable(selectable, CONNECTION_LOST, True)
                    continue
                if not data:
                    self._disconnectSelectable(selectable, CONNECTION_DONE, True)
                    continue
                try:
                    selectable.protocol.dataReceived(data)
                except BaseException:
                    why = sys.exc_info()[1]
                    _log.failure("Unhandled error in dataReceived of {selectable!r}",
                                 selectable=selectable)
                    self._disconnectSelectable(selectable, why, True)
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log.failure("Unhandled error dispatching {selectable!r}",
                             selectable=selectable)

    doIteration = doPoll


def lean_dispatch(reactor) -> bool:
    """Switch a plain L{EPollReactor} to L{LeanEPollReactor}; True if it did.

    Swapping the class keeps every registered reader, writer, timer and
    trigger: the subclass adds no state, only the loop above.
    """
    if type(reactor) is not EPollReactor:
        return False
    reactor.__class__ = LeanEPollReactor
    return True
