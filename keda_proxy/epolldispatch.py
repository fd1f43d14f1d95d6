"""
The epoll reactor, dispatching each event without the legacy log context.

For every ready socket, Twisted's epoll reactor asks the selectable for its
log prefix, copies the legacy log context dictionary with it, and calls
through three wrappers before C{doRead}: about a tenth of the proxy's work
per request, which handles two socket events.  The prefix only names the
"system" of old-style C{log.msg} lines; the proxy logs with
C{twisted.logger}, so this reactor calls the same C{_doReadOrWrite} step
directly and still logs anything that escapes it.

C{lean_dispatch(reactor)} switches an installed L{EPollReactor} (twistd's
default on Linux) over in place; any other reactor is left as it is.
"""

from __future__ import annotations

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

_log = Logger()


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
