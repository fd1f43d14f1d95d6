"""
The epoll reactor, dispatching each event without the legacy log context,
and dialling IPv4 literals at once.

For every ready socket, Twisted's epoll reactor asks the selectable for its
log prefix, copies the legacy log context dictionary with it, and calls
through three wrappers before C{doRead}: about 5% of the proxy's work per
request (two socket events) in profiles.  The prefix only names the
"system" of old-style C{log.msg} lines; the proxy logs with
C{twisted.logger}, so this reactor calls the same C{_doReadOrWrite} step
directly and still logs anything that escapes it.  A plain read on a TCP
connection, most events by far, runs that step's read path inline.

Twisted's TCP client makes its first connect attempt a reactor turn after
C{connectTCP} (a DelayedCall, then a Deferred for an address it already
has): the proxy dials pods right after a scale-from-zero, a batch per
turn, and each batch's dials waited for the next batch to be released
first.  This reactor's C{connectTCP} issues the attempt at once for an
IPv4 literal; everything after it is Twisted's.  C{connect_at_once} goes
one step further for callers that allow it (the pool's pod dials): a
handshake that is already over when C{connect} returns, as it is to a pod
on the same host, is finished in the same call, so the request goes out
in the turn that released it.

It is opt-in, a Twisted reactor plugin: C{twistd -r keda-epoll
keda-interceptor} (see C{twisted/plugins/keda_reactors.py}) calls
L{install}.  Nothing here changes a reactor that is already running; on
any other reactor the proxy works the same, through C{connectTCP}.
"""

from __future__ import annotations

import sys
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from os import strerror
from select import EPOLLIN
from socket import AF_INET

from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.tcp import Client, Connector, Server
from twisted.logger import Logger

_log = Logger()

_IN_PROGRESS = (EINPROGRESS, EWOULDBLOCK, EALREADY)


class _EagerClient(Client):
    """A TCP client that makes its first connect attempt while it is set
    up, for an IPv4 literal.  Only "in progress" is acted on here; an
    attempt that ends at once, either way, is reported a turn later, as
    Twisted reports it, so that nothing happens inside C{connectTCP}."""

    #: whether an attempt in progress is registered with the reactor here
    _watch = True

    def _finishInit(self, whenDone, skt, err, reactor):
        if not whenDone or self._requiresResolution or self.addressFamily != AF_INET:
            super()._finishInit(whenDone, skt, err, reactor)  # resolution, IPv6, errors
            return
        self._commonConnection.__init__(self, skt, None, reactor)
        self.realAddress = self.addr
        try:
            result = skt.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result in _IN_PROGRESS:
            # as doConnect leaves it: its next call, on any event, finishes
            self.doWrite = self.doConnect
            self.doRead = self.doConnect
            if self._watch:
                self._watch_connect()
        elif result in (0, EISCONN):
            reactor.callLater(0, self.doConnect)
        else:
            reactor.callLater(0, self.failIfNotConnected,
                              error.getConnectError((result, strerror(result))))

    def _watch_connect(self) -> None:
        """Let the reactor tell when the attempt in progress ends."""
        self.startReading()
        self.startWriting()

    def _finish_now(self) -> None:
        """The attempt in progress is over, established (L{_established}):
        what C{doConnect} would do on its next call, without asking the
        socket again or registering it twice with epoll on the way."""
        del self.doWrite
        del self.doRead
        self._connectDone()


def _established(skt) -> bool:
    """Whether a connect still "in progress" has in fact completed: a
    loopback or same-host handshake is usually over by the time
    C{connect} returns.  Only an established socket has a peer name (and
    asking does not consume a pending error, as reading C{SO_ERROR} would:
    C{doConnect} still reads that one)."""
    try:
        skt.getpeername()
    except OSError:
        return False
    return True


class _AtOnceClient(_EagerClient):
    """For L{LeanEPollReactor.connect_at_once}: an attempt in progress is
    not registered with the reactor while it is set up; the caller finishes
    it (L{_finish_now}) or hands it to the reactor (L{_watch_connect}) as
    soon as C{connectTCP} returns."""

    _watch = False


class _EagerConnector(Connector):
    client = _EagerClient

    def _makeTransport(self):
        return self.client(self.host, self.port, self.bindAddress, self, self.reactor)


class _AtOnceConnector(_EagerConnector):
    client = _AtOnceClient


#: the transports whose reads take the inlined path (exactly these types:
#: a subclass may read differently), once connected (a client's C{doRead}
#: finishes its connect until then)
_PLAIN_TCP = (Server, Client, _EagerClient, _AtOnceClient)


class LeanEPollReactor(EPollReactor):
    """L{EPollReactor} with a direct dispatch loop and eager IPv4 dials."""

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
            if event == EPOLLIN and type(selectable) in _PLAIN_TCP and selectable.connected:
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
                    self._lose_on_error(selectable, "dataReceived", True)
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log.failure("Unhandled error dispatching {selectable!r}",
                             selectable=selectable)

    doIteration = doPoll

    def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
        connector = _EagerConnector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector

    def connect_at_once(self, host, port, factory, timeout=30.0):
        """C{connectTCP}, for a caller that accepts its protocol being
        connected before this returns: an IPv4 dial whose handshake is
        already over when C{connect} returns (to the same host) is finished
        here, with the one C{epoll_ctl} that registers the connection for
        reading (C{doConnect}, on the next turn, would make four more and
        ask the socket twice).  Anything else goes on as with
        C{connectTCP}."""
        # no connect timeout (a DelayedCall made and cancelled) for a dial
        # that is over before this returns; any other gets it as usual
        connector = _AtOnceConnector(host, port, factory, None, None, self)
        connector.connect()
        connector.timeout = timeout  # for a later connect() of the same connector
        transport = connector.transport
        under_way = transport.doRead == transport.doConnect
        if not under_way or not _established(transport.socket):
            # ended at once (reported a turn later), failed, still under
            # way, or not IPv4
            if under_way:
                transport._watch_connect()
            if timeout is not None:
                connector.timeoutID = self.callLater(
                    timeout, transport.failIfNotConnected, error.TimeoutError())
            return connector
        try:
            transport._finish_now()
        except BaseException:
            # the caller's turn goes on; this connection is lost
            self._lose_on_error(transport, "connect", False)
        return connector

    def _lose_on_error(self, selectable, step: str, is_read: bool) -> None:
        """What the stock dispatch does with an error escaping a
        selectable's C{step} (call it from the C{except} block): log it and
        lose that connection."""
        why = sys.exc_info()[1]
        _log.failure("Unhandled error in {step} of {selectable!r}", step=step,
                     selectable=selectable)
        self._disconnectSelectable(selectable, why, is_read)


def install() -> LeanEPollReactor:
    """Install a L{LeanEPollReactor} as the global reactor (what
    C{twistd -r keda-epoll} calls, before anything imports
    C{twisted.internet.reactor})."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


__all__ = ["LeanEPollReactor", "install"]
