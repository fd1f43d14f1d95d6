"""
The Site behind the admin, metrics and profiling ports.

Those ports serve a few small GET endpoints (KEDA's scaler polls
``/queue``, the kubelet probes ``/livez`` and ``/readyz``, Prometheus
scrapes ``/metrics``).  A stock twisted.web Site would read any request
body first, in memory and then in a temporary file past 100 kB, and would
wait for a request head for as long as the client keeps trickling it.  So
each connection's bytes pass through a L{_HeadGuard} first, which hands
twisted.web's channel whole request heads only:

 - a request that announces a body (any non-zero Content-Length, or a
   Transfer-Encoding) is refused as soon as its head is complete: ``405``
   with ``Allow: GET, HEAD`` for a method other than GET and HEAD, ``413``
   for a GET or HEAD, and the connection closes without any of the body
   being read or kept;
 - a head is limited to L{MAX_HEAD_SIZE} (``414`` for a long request line,
   ``431`` for the rest) and answered ``408`` when it is not complete
   L{HEAD_TIMEOUT} seconds after it began; a silent connection meets the
   Site's idle timeout.

Everything else (parsing, keep-alive, the resources) is twisted.web's,
through its public API.
"""

from __future__ import annotations

import re

from twisted.internet.protocol import Protocol
from twisted.web import http, server

from keda_proxy.wire._status import refusal

#: Request line plus headers; the scaler, probes and scrapers send a few
#: hundred bytes.
MAX_HEAD_SIZE = 16 * 1024
#: Seconds allowed for a whole request head, as on the proxy port.
HEAD_TIMEOUT = 30.0
#: The only methods these ports answer (anything else is a 405).
ALLOWED_METHODS = (b"GET", b"HEAD")

#: the blank line that ends a head (twisted.web takes bare LF line ends too)
_HEAD_END = re.compile(rb"\n\r?\n")
#: a header that announces a body
_BODY_HEADER = re.compile(rb"\n(content-length|transfer-encoding)[ \t]*:[ \t]*([^\r\n]*)",
                          re.IGNORECASE)


def _size(head: bytes) -> int:
    """A head's size without its line ends, as the limit counts it."""
    return len(head) - head.count(b"\n") - head.count(b"\r")


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def _fields_valid(head: bytes) -> bool:
    """Every header line a token, a colon and a value (no folded lines)."""
    for line in head.rstrip(b"\r\n").split(b"\n")[1:]:
        name, sep, _ = line.rstrip(b"\r").partition(b":")
        if not sep or not _TOKEN.match(name):
            return False
    return True


class _HeadGuard(Protocol):
    """Stands between the transport and twisted.web's C{HTTPChannel}: only
    whole, bounded, bodiless request heads get through (see module doc)."""

    _timer = None
    _refused = False

    def __init__(self, channel, clock, head_timeout: float = HEAD_TIMEOUT):
        #: the twisted.web channel that parses and answers what gets through
        self.channel = channel
        self.clock = clock
        self.head_timeout = head_timeout
        self._buffer = b""

    def makeConnection(self, transport):
        Protocol.makeConnection(self, transport)
        self.channel.makeConnection(transport)

    def connectionMade(self):
        self._arm()  # the first head begins with the connection

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request: dropped unread
        if not self._buffer and self._timer is None:
            self._arm()  # the first bytes of a kept-alive connection's next head
        self.channel.resetTimeout()  # activity, for the idle timeout
        buffer = self._buffer + data
        while buffer:
            end = _HEAD_END.search(buffer)
            head = buffer if end is None else buffer[:end.end()]
            if _size(head) > MAX_HEAD_SIZE:
                line = head.find(b"\n")
                self.refuse(414 if line < 0 or _size(head[:line]) > MAX_HEAD_SIZE else 431)
                return
            if end is None:
                break
            cut = end.end()
            if not _fields_valid(head):
                self.refuse(400)
                return
            if self._announces_body(head):
                return
            buffer = buffer[cut:]
            self._cancel()
            self.channel.dataReceived(head)
            if buffer and not self._refused:
                self._arm()
        self._buffer = buffer

    def _announces_body(self, head: bytes) -> bool:
        """Refuse a request with a body: True when it was refused."""
        for match in _BODY_HEADER.finditer(head):
            name, value = match.group(1).lower(), match.group(2).strip()
            if name == b"content-length" and value == b"0":
                continue
            method = head.lstrip(b"\r\n").split(b" ", 1)[0]
            if method in ALLOWED_METHODS:
                self.refuse(413, head_only=method == b"HEAD")
            else:
                self.refuse(405, extra=b"Allow: GET, HEAD\r\n")
            return True
        return False

    def refuse(self, code: int, extra: bytes = b"", head_only: bool = False) -> None:
        """Answer C{code} and close, reading nothing more from the client."""
        self._cancel()
        self._refused = True
        self._buffer = b""
        transport = self.transport
        if transport is None or transport.disconnecting:
            return
        transport.write(refusal(code, extra, head_only))
        transport.loseConnection()

    def _arm(self) -> None:
        if self.head_timeout and self._timer is None:
            self._timer = self.clock.callLater(self.head_timeout, self._timed_out)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        self.refuse(408)

    def connectionLost(self, reason=None):
        self._cancel()
        self.channel.connectionLost(reason)


class AdminSite(server.Site):
    """A stock Site whose connections pass through a L{_HeadGuard}, and
    no access log."""

    noisy = False
    #: the HTTP/1.1 channel itself: these ports offer no HTTP/2
    protocol = http.HTTPChannel

    def buildProtocol(self, addr):
        return _HeadGuard(super().buildProtocol(addr), self.reactor)

    def log(self, request):
        pass
