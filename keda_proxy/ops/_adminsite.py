"""
The Site behind the admin and metrics ports.

Those ports serve a few small GET endpoints (KEDA's scaler polls
``/queue``, the kubelet probes ``/livez`` and ``/readyz``, Prometheus
scrapes ``/metrics``).  A stock twisted.web Site would read any request
body first, in memory and then in a temporary file past 100 kB, and would
wait for a request head for as long as the client keeps trickling it.  So:

 - L{AdminRequest} refuses a request with a body as soon as its head is
   parsed (C{gotLength}): ``405`` with ``Allow: GET, HEAD`` for a method
   other than GET and HEAD, ``413`` for a GET or HEAD, and the connection
   closes without any of the body being read or kept;
 - L{AdminChannel} limits the head to L{MAX_HEAD_SIZE} (``414`` for a long
   request line, ``431`` for the rest) and answers ``408`` and closes when a
   head is not complete L{HEAD_TIMEOUT} seconds after it began; a silent
   connection meets the factory's idle timeout.
"""

from __future__ import annotations

from io import BytesIO

from twisted.web import http, server

from keda_proxy.steps._responses import status_text

#: Request line plus headers; the scaler, probes and scrapers send a few
#: hundred bytes.
MAX_HEAD_SIZE = 16 * 1024
#: Seconds allowed for a whole request head, as on the proxy port.
HEAD_TIMEOUT = 30.0
#: The only methods these ports answer (anything else is a 405).
ALLOWED_METHODS = (b"GET", b"HEAD")


def _discard(*args):
    pass


class AdminRequest(server.Request):
    """A request that never has a body: one announced (any non-zero
    Content-Length, or chunked) is refused before any of it is read."""

    def gotLength(self, length):
        if length == 0:
            self.content = BytesIO()  # empty, for resources that read it
            return
        # no "100 Continue" for a body that is not wanted (the channel sends
        # one after this call when the request expects it)
        self.requestHeaders.removeHeader(b"expect")
        self.channel.refuse_body()

    def handleContentChunk(self, data):
        """Body bytes are dropped, never stored (none arrive: the channel
        stops reading when it refuses the body)."""


class AdminChannel(http.HTTPChannel):
    """HTTPChannel with a small head limit, a head deadline, and a way to
    answer a request it will not read and hang up."""

    totalHeadersSize = MAX_HEAD_SIZE
    MAX_LENGTH = MAX_HEAD_SIZE
    head_timeout = HEAD_TIMEOUT
    #: the pending head deadline, or None when no head is being read
    _head_timer = None

    def connectionMade(self):
        super().connectionMade()
        self._arm_head_timer()  # the first head begins with the connection

    def dataReceived(self, data):
        if self._head_timer is None and not self._handlingRequest:
            # the first bytes of a kept-alive connection's next head: a
            # connection idle between requests is the idle timeout's business
            self._arm_head_timer()
        super().dataReceived(data)

    def _arm_head_timer(self):
        if self.head_timeout:
            self._head_timer = self.callLater(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self):
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_timed_out(self):
        self._head_timer = None
        self.refuse(408)

    def allHeadersReceived(self):
        self._cancel_head_timer()
        super().allHeadersReceived()

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_oversized()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        self._refuse_oversized()

    def _refuse_oversized(self):
        # nothing counted yet: this is the request line
        self.refuse(414 if self._receivedHeaderSize == 0 else 431)

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(400)

    def refuse_body(self):
        """Refuse the request whose head was just parsed, for carrying a
        body: 413 for GET and HEAD, 405 for any other method."""
        method = self._command
        if method in ALLOWED_METHODS:
            self.refuse(413, head_only=method == b"HEAD")
        else:
            self.refuse(405, extra=b"Allow: GET, HEAD\r\n")

    def refuse(self, code: int, extra: bytes = b"", head_only: bool = False):
        """Answer C{code} and close, reading nothing more from the client."""
        self._cancel_head_timer()
        transport = self.transport
        if transport is None or transport.disconnecting:
            return
        body = status_text(code) + b"\n"
        transport.write(
            b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, status_text(code), extra, len(body), b"" if head_only else body))
        # whatever else arrives (the rest of the body) is dropped unread
        self.dataReceived = self.lineReceived = self.rawDataReceived = _discard
        self.clearLineBuffer()
        self.loseConnection()

    def connectionLost(self, reason):
        self._cancel_head_timer()
        super().connectionLost(reason)


class AdminSite(server.Site):
    """A Site for the admin and metrics ports: L{AdminChannel} and
    L{AdminRequest}, and no access log."""

    protocol = AdminChannel
    requestFactory = AdminRequest
    noisy = False

    def __init__(self, resource, **kw):
        kw.setdefault("requestFactory", AdminRequest)
        super().__init__(resource, **kw)

    def log(self, request):
        pass
