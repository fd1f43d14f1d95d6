"""
Two yardsticks for ``bench_proxy.py --targets ...,hello,rawproxy``: what
CPython + Twisted can do on this machine with no proxy logic at all.

  ``yardsticks.py hello PORT``
      a twisted.web Site answering every request with the backend's body:
      the cost of twisted.web's server side alone (parsing, Request,
      Date/Server headers), i.e. the ceiling of any engine that keeps
      twisted.web for the client side.

  ``yardsticks.py rawproxy PORT UPSTREAM_PORT [--nodelay]``
      a keep-alive HTTP/1.1 forwarder on raw Twisted protocols: one
      upstream connection per client connection, messages framed by
      ``\\r\\n\\r\\n`` and Content-Length only (no chunked, no bodies on
      requests, no header rewriting).  The ceiling of a Twisted proxy that
      does nothing but move bytes; with ``--nodelay`` TCP_NODELAY is set
      on both sockets.

Not a product, not for other uses: it assumes well-formed, body-less GETs.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor


def hello(port: int) -> None:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from benchlib import BODY
    from twisted.web import resource, server

    body = BODY.encode()

    class Hello(resource.Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader(b"content-type", b"text/plain")
            return body

    site = server.Site(Hello())
    site.log = lambda request: None
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=4096)
    reactor.run()


class _Up(protocol.Protocol):
    """Upstream side: frames responses by Content-Length and relays them."""

    def __init__(self, down):
        self.down = down
        self.buf = b""
        self.need = None

    def connectionMade(self):
        if self.down.nodelay:
            self.transport.setTcpNoDelay(True)
        self.down.upstream_ready(self)

    def dataReceived(self, data):
        self.buf += data
        while True:
            if self.need is None:
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                length = 0
                for line in self.buf[:i].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.need = i + 4 + length
            if len(self.buf) < self.need:
                return
            msg, self.buf, self.need = self.buf[:self.need], self.buf[self.need:], None
            self.down.transport.write(msg)

    def connectionLost(self, reason):
        self.down.transport.loseConnection()


class _Down(protocol.Protocol):
    """Client side: forwards each request head to its upstream connection."""

    up = None

    def __init__(self, upstream_port, nodelay):
        self.upstream_port = upstream_port
        self.nodelay = nodelay
        self.buf = b""

    def connectionMade(self):
        if self.nodelay:
            self.transport.setTcpNoDelay(True)
        protocol.ClientCreator(reactor, _Up, self).connectTCP("127.0.0.1", self.upstream_port)

    def upstream_ready(self, up):
        self.up = up
        self.dataReceived(b"")

    def dataReceived(self, data):
        self.buf += data
        if self.up is None:
            return
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.up.transport.write(self.buf[:i + 4])
            self.buf = self.buf[i + 4:]

    def connectionLost(self, reason):
        if self.up is not None:
            self.up.transport.loseConnection()


def rawproxy(port: int, upstream_port: int, nodelay: bool) -> None:
    factory = protocol.Factory()
    factory.noisy = False
    factory.buildProtocol = lambda addr: _Down(upstream_port, nodelay)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=4096)
    reactor.run()


def main(argv):
    if len(argv) >= 2 and argv[0] == "hello":
        hello(int(argv[1]))
    elif len(argv) >= 3 and argv[0] == "rawproxy":
        rawproxy(int(argv[1]), int(argv[2]), "--nodelay" in argv)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
