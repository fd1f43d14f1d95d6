"""
The protocol of a TLS upstream connection, as ALPN decides it.

A TLS upstream is offered ``h2`` and ``http/1.1``
(L{keda_proxy.upstream._tls.UpstreamTLS}); which one it speaks is known
only once the handshake is done.  Until then the connection's protocol is
an L{ALPNSwitch}: told of the handshake (Twisted's L{IHandshakeListener}),
it reads the negotiated protocol from the TLS transport, hands the
connection to the protocol that speaks it (the TLS transport's
C{wrappedProtocol} becomes that one, which then sees every byte), and
fires L{ALPNSwitch.negotiated} with it.  A handshake that fails (a
certificate for another name, say) fails that Deferred: the dial failed.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, INegotiated
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHandshakeListener)
class ALPNSwitch(Protocol):
    """Holds a TLS connection until its handshake is done.

    @ivar negotiated: fires with the protocol the connection was handed
        to, or fails with why the connection ended first; cancelling it
        drops the connection.
    """

    #: the protocol handed a connection that is not TLS after all, which
    #: this one then passes everything on to
    _relay = None

    def __init__(self, choose: Callable[[Optional[bytes]], Protocol]):
        """
        @param choose: called with the negotiated protocol name (C{b"h2"},
            C{b"http/1.1"}, or None when the server chose none); returns
            the (unconnected) protocol to speak it.
        """
        self.choose = choose
        self.negotiated = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if not INegotiated.providedBy(self.transport):
            # no TLS under it (an https key dialled without upstream TLS
            # configured): no handshake will come, and HTTP/1.1 it is
            self._hand_over(None, tls=False)

    def handshakeCompleted(self) -> None:
        self._hand_over(self.transport.negotiatedProtocol, tls=True)

    def _hand_over(self, name: Optional[bytes], tls: bool) -> None:
        d = self.negotiated
        if d.called:  # cancelled meanwhile
            return
        protocol = self.choose(name)
        if tls:
            self.transport.wrappedProtocol = protocol
        else:
            self._relay = protocol
        protocol.makeConnection(self.transport)
        d.callback(protocol)

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.dataReceived(data)
        else:  # nothing arrives before the handshake is done
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        reason = reason or Failure(ConnectionDone())
        if self._relay is not None:
            self._relay.connectionLost(reason)
            return
        d = self.negotiated
        if not d.called:
            d.errback(reason)

    def _cancel(self, d: Deferred) -> None:
        if self.transport is not None:
            self.transport.abortConnection()
