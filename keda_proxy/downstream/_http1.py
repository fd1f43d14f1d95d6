"""
The proxy's side facing clients: twisted.web, adapted to stream.

twisted.web buffers a whole request body before it renders anything.  A
proxy must not: a 1 GiB upload has to flow upstream as it arrives, with a
slow upstream slowing the client down.  So L{StreamingRequest} starts the
pipeline as soon as the request head is parsed (C{gotLength}), hands each
body chunk to a L{BodyStream}, and treats the channel's "request received"
as the end of the body.

L{ProxyChannel} adds what a public-facing proxy needs on top of
C{HTTPChannel} (which already refuses Content-Length with
Transfer-Encoding, repeated Content-Lengths, and CR/LF/NUL in headers):
414 and 431 for oversized heads, a deadline for reading the head
(slowloris), and safety when a response ends before its request body.
"""

from __future__ import annotations

import re
import socket
import warnings
from typing import Optional

from twisted.protocols import basic
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import INonQueuedRequestFactory

from keda_proxy.downstream._eagerwrite import eager_write
from keda_proxy.steps._responses import status_text
from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError, CountedDecoder, content_length
from keda_proxy.wire._headers import CANONICAL_NAMES, canonical_name, connection_tokens

#: Whole request head (line + headers) limit, as Go's 1 MiB is too generous
#: for a Python proxy; 64 KiB covers large cookies and JWTs.
MAX_HEAD_SIZE = 64 * 1024
#: Time allowed to send a complete request head (enforced as bytes arrive;
#: a silent client meets twisted.web's 60 s idle timeout instead).
HEAD_TIMEOUT = 30.0
#: Request-body bytes buffered before the client is paused.
BODY_HIGH_WATER = 256 * 1024
#: A request body must keep coming: it has this long to start, and every
#: byte received buys 1/BODY_MIN_RATE s more (Apache's mod_reqtimeout
#: rule).  A body trickled in to hold a request open, and with it the
#: route's Concurrency and KEDA's scaling, is cut.  Time the proxy itself
#: holds the client back (a slow upstream) does not count.
BODY_GRACE = 30.0
BODY_MIN_RATE = 500.0
#: where Linux says how long an accept queue may be
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def listen_backlog(path: str = SOMAXCONN_PATH) -> int:
    """The accept-queue length to ask for: the kernel's own limit
    (C{net.core.somaxconn}, 4096 on current kernels), as Go's listeners ask
    for, capped at 65535 (the kernel keeps it in 16 bits); the C library's
    C{SOMAXCONN} where the file cannot be read.  Twisted's default of 50
    overflows when hundreds of clients connect at once: a handshake that
    finds the queue full is dropped, and its client retries a second
    later."""
    try:
        with open(path, "rb") as f:
            n = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return socket.SOMAXCONN
    if n <= 0:
        return socket.SOMAXCONN
    return min(n, 65535)


class BodyStream:
    """A request body in flight: buffers until a consumer attaches, then
    passes chunks straight through, pausing the client when the consumer
    falls behind.

    The consumer is anything with C{write_body(data)} and C{end_body()}
    (an upstream connection).
    """

    def __init__(self, length: Optional[int], pause, resume):
        self.length = length  # None: chunked, unknown length
        self.done = length == 0
        self._buffer: list = []
        self._buffered = 0
        self._consumer = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        #: body bytes received so far
        self.received = 0

    @property
    def empty(self) -> bool:
        return self.length == 0

    @property
    def paused(self) -> bool:
        return self._paused

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._consumer is not None:
            self._consumer.write_body(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()

    def end(self) -> None:
        self.done = True
        if self._consumer is not None:
            self._consumer.end_body()

    def attach(self, consumer) -> None:
        """Send everything buffered to C{consumer}, then stream to it."""
        self._consumer = consumer
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for chunk in buffered:
            consumer.write_body(chunk)
        if self.done:
            consumer.end_body()
        if self._paused:
            self._paused = False
            self._resume()

    def detach(self) -> None:
        self._consumer = None

    # IPushProducer-ish hooks for the upstream transport's flow control
    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            self._pause()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._resume()

    def stopProducing(self) -> None:
        self._consumer = None


def _never(*args):
    raise AssertionError("the empty body has no flow to control")


#: the body of every request without one (most of them): complete from the
#: start, so nothing ever writes to it, attaches to it or pauses through it
_NO_BODY = BodyStream(0, _never, _never)

#: RFC 9110 token characters, and the request-target bytes twisted.web takes
_TOKEN_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                b"!#$%&'*+-.^_`|~")
_TARGET_BYTES = bytes(range(33, 177))


def parse_request_line(line: bytes):
    """twisted.web's C{_parseRequestLine}, with the same answers, checking
    the method and the target in C (C{bytes.translate}) rather than with a
    Python loop over every byte of the URL.  Raises C{ValueError}."""
    method, target, version = line.split(b" ")
    if not method or method.translate(None, _TOKEN_BYTES):
        raise ValueError("Invalid method")
    if target.translate(None, _TARGET_BYTES):
        raise ValueError("Invalid request-target")
    if not target:
        raise ValueError("Empty request-target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise ValueError("Invalid version")
    return method, target, version


#: the control characters a request head may not hold, HTAB aside (CR and
#: LF only as the CRLF pairs that end its lines): deleting them from a head
#: must remove exactly its line ends, in one C pass
_CONTROL = bytes(c for c in range(32) if c != 9) + b"\x7f"
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]").match


def _other_target_form(method: bytes, target: bytes) -> bool:
    """Whether a target that is not origin-form is allowed: absolute form,
    ``*`` for OPTIONS, or anything for CONNECT (answered 405)."""
    if method == b"CONNECT":
        return True
    if target == b"*":
        return method == b"OPTIONS"
    return _ABSOLUTE_FORM(target) is not None


#: looked up once: twisted.web.http is a deprecation proxy module, on which
#: every attribute access costs a Python-level __getattribute__
_NO_BODY_CODES = http.NO_BODY_CODES

#: request factory -> whether it provides INonQueuedRequestFactory
_NONQUEUED: dict = {}

#: names whose values choose the body's framing (always the full path)
_FRAMING_NAMES = frozenset({b"Content-Length", b"Transfer-Encoding"})

_date_cache = [None, b""]


def _http_date(clock) -> bytes:
    """The HTTP Date for now, formatted once per second."""
    now = int(clock.seconds())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = http.datetimeToString(now)
    return _date_cache[1]


class StreamingRequest(server.Request):
    """A Request that is processed when its head arrives (see module doc)."""

    body: Optional[BodyStream] = None
    #: called once, with None when the response is complete or a Failure
    #: when the connection is lost first: notifyFinish without a Deferred
    on_done = None

    def __init__(self, channel, queued=None):
        """The state twisted.web's C{Request} and C{Componentized}
        constructors set up, set here in one step (their chain of calls
        runs for every request).  The channel's addresses are cached per
        connection; request bodies are never parsed as forms."""
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self.received_cookies = {}
        self.responseHeaders = Headers()
        self.cookies = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = False
        self._adapterCache = {}

    def gotLength(self, length):
        ch = self.channel
        self.method, self.uri, self.clientproto = ch._command, ch._path, ch._version
        self.path = self.uri.split(b"?", 1)[0]
        self.args = {}
        transport = ch.transport
        self.body = _NO_BODY if length == 0 else BodyStream(
            length, transport.pauseProducing,
            getattr(ch, "resume_body", transport.resumeProducing))
        self.content = None
        if hasattr(ch, "head_complete"):
            ch.head_complete()
        if length != 0 and hasattr(ch, "watch_body"):
            ch.watch_body(self.body)
        if length != 0:
            # A body follows: start now, so that it can stream upstream.
            self.process()
        # No body: the channel calls requestReceived next, in this same
        # call; processing there keeps twisted.web's own order of events,
        # which a response finished right away (a 404, a static route)
        # needs for the connection to carry on with the next request.

    def process(self):
        """Render the root resource directly: the proxy has a single leaf
        resource, so traversal and the default ``Server`` header (Go sends
        none) are skipped; ``Date`` is set as Go sets it."""
        self.site = self.channel.site
        self.responseHeaders._rawHeaders[b"Date"] = [_http_date(self.site.reactor)]
        self.prepath = []
        self.postpath = []
        try:
            self.render(self.site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def parseCookies(self):
        """Cookies pass through untouched; parsing them would be wasted."""

    def handleContentChunk(self, data):
        if self.body is not None and not self.finished:
            self.body.write(data)

    def requestReceived(self, command, path, version):
        # The channel calls this once the whole body is in.
        body = self.body
        if body is not None and body.length == 0:
            self.process()
        elif body is not None:
            body.end()

    def _cleanup(self):
        """http.Request's, in one step when there is no producer left and no
        body file to close (always, for the proxy)."""
        if self.producer or self.content is not None:
            super()._cleanup()
        else:
            self.channel.requestDone(self)
            del self.channel
        self._fire_done(None)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._fire_done(reason)

    def _fire_done(self, result):
        callback = self.on_done
        if callback is not None:
            self.on_done = None
            callback(result)

    #: a proxy passes bodies on as they are: no Content-Type is made up for
    #: an upstream response that has none (twisted.web would add text/html)
    defaultContentType = None

    #: the upstream's L{ResponseHead} when proxying: its header lines are
    #: sent as they are, ahead of ours
    upstream_head = None
    #: HEAD, 204 or 304: the head goes out, any body is dropped
    _bodiless = False

    def write(self, data):
        """http.Request's write, without server.Request's default
        Content-Type and content encoders (which the proxy never uses), and
        with the head sent in the same C{send} as the first body bytes."""
        if self.finished:
            raise RuntimeError(
                "Request.write called on a request after Request.finish was called.")
        if self._disconnected or self._bodiless:
            return
        if self.startedWriting:
            head = b""
        else:
            self.startedWriting = 1
            head = self._response_head()
            if self._bodiless:
                self.channel.write(head)
                return
        if data:
            self.sentLength += len(data)
            if self.chunked:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            self.channel.write(head + data)
        elif head:
            self.channel.write(head)

    def _response_head(self) -> bytes:
        """The status line and headers: the upstream's lines (if proxying),
        then ours, chunked framing when the length is unknown."""
        version = self.clientproto
        code = self.code
        parts = [version, b" %d " % code, self.code_message, b"\r\n"]
        raw = self.responseHeaders._rawHeaders
        upstream = self.upstream_head
        if upstream is not None:
            parts.append(upstream.block)
            length_known = upstream.length is not None
            skip = b"Date" if upstream.has_date else None
        else:
            length_known = b"Content-Length" in raw
            skip = None
        for name, values in raw.items():
            if name != skip:
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        if self.method == b"HEAD" or code in _NO_BODY_CODES:
            self._bodiless = True
        elif not length_known and version == b"HTTP/1.1":
            self.chunked = 1
            parts.append(b"Transfer-Encoding: chunked\r\n")
        channel = self.channel
        if channel is not None and channel.persistent:
            if channel.site.draining:  # as Go's server while it shuts down
                channel.persistent = False
                parts.append(b"Connection: close\r\n")
            elif version == b"HTTP/1.0":
                # the client asked for keep-alive (L{ProxyChannel.checkPersistence})
                if self._bodiless or length_known:
                    parts.append(b"Connection: keep-alive\r\n")
                else:
                    channel.persistent = False  # the body ends with the connection
        parts.append(b"\r\n")
        return b"".join(parts)

    def finish(self):
        """http.Request's finish in one step (server.Request's own only adds
        content encoders, which the proxy never uses)."""
        body = self.body
        channel = self.channel
        if body is not None and not body.done and channel is not None:
            # The response is done before the request body: the rest of the
            # body cannot be told from a next request, so close afterwards.
            channel.persistent = False
            body.detach()
        if self._disconnected:
            raise RuntimeError(
                "Request.finish called on a request after its connection was lost; "
                "use Request.notifyFinish to keep track of this.")
        if self.finished:
            warnings.warn("Warning! request.finish called twice.", stacklevel=2)
            return
        if not self.startedWriting:
            self.write(b"")
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        factory = getattr(channel, "factory", None)
        if factory is not None:
            factory.log(self)
        self.finished = 1
        if not self.queued:
            self._cleanup()


class ProxyChannel(http.HTTPChannel):
    """HTTPChannel with 414/431, a head deadline, and early-response safety."""

    totalHeadersSize = MAX_HEAD_SIZE
    MAX_LENGTH = MAX_HEAD_SIZE
    head_timeout = HEAD_TIMEOUT
    #: when the current request head began (its first byte; for a new
    #: connection, the connection itself, as in Go), or None when no head
    #: is being read
    _head_started = None

    def connectionMade(self):
        super().connectionMade()
        self._head_started = self._now()

    def _now(self) -> float:
        return self.site.reactor.seconds()

    def head_complete(self):
        self._head_started = None

    # -- slow request bodies (see BODY_GRACE) -------------------------------

    body_grace = BODY_GRACE
    body_min_rate = BODY_MIN_RATE
    _body_timer = None
    _body_base = 0.0

    def watch_body(self, body: BodyStream) -> None:
        """Cut C{body}'s connection if the body stops coming at the
        minimum rate; one timer per request with a body."""
        self._body_base = self._now() + self.body_grace
        self._body_timer = self.site.reactor.callLater(self.body_grace, self._check_body, body)

    def resume_body(self) -> None:
        """The proxy lets a body it held back flow again: the client's
        idle time and its body grace start from now."""
        now = self._active_at = self._now()
        body = self.requests[-1].body if self.requests else None
        if body is not None:
            self._fresh_body_grace(body, now)
        self.transport.resumeProducing()

    def _fresh_body_grace(self, body: BodyStream, now: float) -> None:
        self._body_base = max(self._body_base,
                              now + self.body_grace - body.received / self.body_min_rate)

    def _check_body(self, body: BodyStream) -> None:
        self._body_timer = None
        if body.done or self.transport is None:
            return
        now = self._now()
        if body.paused:  # the proxy holds it back: its time does not count
            self._fresh_body_grace(body, now)
        due = self._body_base + body.received / self.body_min_rate
        if due > now:
            self._body_timer = self.site.reactor.callLater(due - now, self._check_body, body)
            return
        request = self.requests[0] if self.requests else None
        if request is not None and request.startedWriting:
            self.transport.abortConnection()  # a response is under way: only a cut is left
        else:
            self._refuse(408)

    def _body_held_back(self) -> bool:
        body = getattr(self.requests[-1], "body", None) if self.requests else None
        return body is not None and body.paused

    def connectionLost(self, reason):
        timer, self._body_timer = self._body_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)

    _host = None
    _peer = None

    def getHost(self):
        """The local address, asked of the socket once per connection: each
        twisted.web Request asks for it, which would be a syscall per
        request."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def getPeer(self):
        """The client address, made once per connection rather than for
        every Request."""
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def write(self, data):
        """One C{send} when the socket takes it (see L{keda_proxy.downstream._eagerwrite})."""
        if self.transport is not None:
            eager_write(self.transport, data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def dataReceived(self, data):
        # A head that takes too long is refused when its next bytes arrive;
        # a client that goes silent instead meets the idle timeout.  No
        # timer per request: this runs only while a head is incomplete.
        now = self._active_at = self._now()  # read by timeoutConnection
        started = self._head_started
        if started is None:
            if self._HTTPChannel__first_line and not self._handlingRequest:
                self._head_started = now  # a keep-alive connection's next head
        elif self.head_timeout and now - started >= self.head_timeout:
            self._refuse(408)
            return
        if (self._HTTPChannel__first_line == 1 and self.line_mode and not self._buffer
                and not self._busyReceiving and not self._handlingRequest
                and self.persistent and not self.paused):
            end = data.find(b"\r\n\r\n")
            if end > 0 and self._whole_head(data, end):
                return
        super().dataReceived(data)

    def _whole_head(self, data: bytes, end: int) -> bool:
        """The common case, a whole request head in one read, parsed in one
        go with the same steps and checks as HTTPChannel's line-by-line
        parser.  Returns False, having changed nothing, for anything
        unusual (folded lines, a leading empty line, limits), which the
        line-by-line parser then handles as usual."""
        head = data[:end]
        lines = head.split(b"\r\n")
        size = end - 2 * (len(lines) - 1)
        if size > self.totalHeadersSize or len(lines) - 1 > self.maxHeaders or not lines[0]:
            return False
        # no line over the limit, none folded (checked in C, not per line)
        if size > self.MAX_LENGTH and max(map(len, lines)) > self.MAX_LENGTH:
            return False
        if head[:1] in (b" ", b"\t"):
            return False
        if len(head.translate(None, _CONTROL)) != end - 2 * (len(lines) - 1) \
                or head.find(b"\r\n ") >= 0 or head.find(b"\r\n\t") >= 0:
            # control characters, a bare CR or LF, a folded line (obs-fold)
            self._refuse(400)
            return True
        factory = self.requestFactory
        nonqueued = _NONQUEUED.get(factory)
        if nonqueued is None:  # asked once per factory, not per request
            nonqueued = _NONQUEUED[factory] = INonQueuedRequestFactory.providedBy(factory)
        if nonqueued:
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        try:
            command, path, version = parse_request_line(lines[0])
        except ValueError:
            self._respondToBadRequestAndDisconnect()
            return True
        self._command, self._path, self._version = command, path, version
        self._receivedHeaderSize = size
        # headerReceived's steps, with the name looked up directly for names
        # seen before (the usual case); anything else takes headerReceived
        raw = request.requestHeaders._rawHeaders
        known = CANONICAL_NAMES
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            name = known.get(name)
            if name is None or not sep:
                if not self.headerReceived(line):
                    return True
            elif not self._store_header(raw, name, value.strip(b" \t")):
                return True
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.line_mode = 0  # setRawMode
        rest = data[end + 4:]
        if rest and self.transport is not None and not self.transport.disconnecting:
            basic.LineReceiver.dataReceived(self, rest)
        return True

    def requestDone(self, request):
        """HTTPChannel's, in one step (it runs after every response)."""
        if request is not self.requests[0]:
            raise TypeError
        del self.requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        self.line_mode = 1
        buffered = self._dataBuffer
        if buffered:  # a pipelined request came in meanwhile
            self._dataBuffer = []
            self.dataReceived(b"".join(buffered))

    def allHeadersReceived(self):
        """As HTTPChannel's, but any ``100 Continue`` goes out before the
        request is processed: a response the proxy gives at once (a 404) must
        not be followed by a 100.  A request-target must be in origin form,
        absolute form, or ``*`` for OPTIONS (CONNECT's authority form is
        refused later, with a 405)."""
        path = self._path
        if path[:1] != b"/" and not _other_target_form(self._command, path):
            self._refuse(400)
            return
        req = self.requests[-1]
        self.persistent = self.checkPersistence(req, self._version)
        expect = req.requestHeaders._rawHeaders.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()
        req.gotLength(self.length)

    def checkPersistence(self, request, version):
        """HTTP/1.1 keeps the connection unless the request says
        ``Connection: close``: a token in any ``Connection`` value,
        comma-separated and in any case, as Go reads it (twisted.web splits
        on spaces, so ``keep-alive,close`` kept it open).

        HTTP/1.0 closes it, unless the request asks for
        ``Connection: keep-alive`` (``ab -k``, some load balancers' checks)
        and its response has a known length: as in Go, that response then
        says ``Connection: keep-alive``, and one whose body runs until the
        close still closes (L{StreamingRequest._response_head} decides)."""
        tokens = connection_tokens(request.requestHeaders)
        if version != b"HTTP/1.1":
            return version == b"HTTP/1.0" and b"keep-alive" in tokens and b"close" not in tokens
        if b"close" in tokens:
            request.responseHeaders._rawHeaders[b"Connection"] = [b"close"]
            return False
        return True

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(414 if self._HTTPChannel__first_line else 431)
            return
        if line[:1] in (b" ", b"\t") and not self._HTTPChannel__first_line:
            self._refuse(400)  # obs-fold: Go refuses it, and so do we
            return
        super().lineReceived(line)

    def headerReceived(self, line):
        """HTTPChannel's header step with Go's checks (no control character
        but HTAB in a value), storing the value once (the base class encodes
        and sanitises every header twice)."""
        name, sep, data = line.partition(b":")
        if not sep or len(line.translate(None, _CONTROL)) != len(line):
            self._respondToBadRequestAndDisconnect()
            return False
        try:
            name = canonical_name(name)
        except InvalidHeaderName:
            self._respondToBadRequestAndDisconnect()
            return False
        return self._store_header(self.requests[-1].requestHeaders._rawHeaders, name,
                                  data.strip(b" \t"))

    def _store_header(self, raw: dict, name: bytes, value: bytes) -> bool:
        """Store one checked header (its canonical name, its trimmed value);
        False once the request has been refused with a 400."""
        if name in _FRAMING_NAMES and not self._choose_framing(name, value):
            return False
        values = raw.get(name)
        if values is None:
            raw[name] = [value]
        else:
            values.append(value)
        self._receivedHeaderCount += 1
        if self._receivedHeaderCount > self.maxHeaders:
            self._respondToBadRequestAndDisconnect()
            return False
        return True

    def _choose_framing(self, name: bytes, value: bytes) -> bool:
        """The body's framing, from its one Content-Length or its one
        ``Transfer-Encoding: chunked`` (HTTP/1.1 only); anything else, or
        both, is a 400 (see L{keda_proxy.wire._framing})."""
        if self._transferDecoder is not None:  # a second framing header
            self._respondToBadRequestAndDisconnect()
            return False
        request = self.requests[-1]
        if name == b"Content-Length":
            length = content_length(value)
            decoder = None if length is None else CountedDecoder(
                length, request.handleContentChunk, self._finishRequestBody)
        elif value.lower() == b"chunked" and self._version == b"HTTP/1.1":
            length = None
            decoder = ChunkedDecoder(request.handleContentChunk, self._finishRequestBody)
        else:
            decoder = None
        if decoder is None:
            self._respondToBadRequestAndDisconnect()
            return False
        self.length = length
        self._transferDecoder = decoder
        return True

    def rawDataReceived(self, data):
        try:
            super().rawDataReceived(data)
        except ChunkedError:
            request = self.requests[-1] if self.requests else None
            if request is not None and request.startedWriting:
                self.transport.abortConnection()  # a 400 cannot follow a response
            else:
                self._refuse(400)

    def lineLengthExceeded(self, line):
        self._refuse(414 if self._HTTPChannel__first_line else 431)

    def allContentReceived(self):
        if not self.requests:
            # the response already ended and closed the connection; this is
            # the tail of its request body
            self.length = 0
            self._transferDecoder = None
            return
        # HTTPChannel's steps, except that the idle timer is not cancelled
        # here and re-armed after every request (two timer operations per
        # request): it keeps running, and timeoutConnection below ignores
        # it while a request is being answered.
        command, path, version = self._command, self._path, self._version
        self.length = 0
        self._receivedHeaderCount = 0
        self._receivedHeaderSize = 0
        self._HTTPChannel__first_line = 1
        self._transferDecoder = None
        del self._command, self._path, self._version
        self._handlingRequest = True
        self.line_mode = 0  # setRawMode
        self.requests[-1].requestReceived(command, path, version)

    #: when bytes last arrived: the idle timer is not reset on every request
    #: (a timer operation each); when it fires, it looks at this instead
    _active_at = 0.0

    def timeoutConnection(self):
        if self._handlingRequest or self._body_held_back():
            # a whole request is in and being answered, or the proxy itself
            # holds the body back (a slow upstream): look again later
            self.setTimeout(self.timeOut)
            return
        period = self.timeOut
        idle = self._now() - self._active_at
        if period and idle < period:  # active since: wait out the rest
            self.setTimeout(period - idle)
            self.timeOut = period  # setTimeout changed the period too
            return
        super().timeoutConnection()

    def _refuse(self, code: int):
        """Answer a request we will not read, then hang up."""
        self.head_complete()
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self.setTimeout(None)  # the close is under way: no idle close after it
        phrase = status_text(code)
        body = phrase + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, phrase, len(body), body))
        self.dataReceived = self.lineReceived = lambda *a: None
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self):
        self._refuse(400)


class StreamingSite(server.Site):
    """A Site whose requests stream (see L{StreamingRequest})."""

    requestFactory = StreamingRequest
    #: the channel itself, not twisted.web's wrapper that would switch to
    #: HTTP/2 after ALPN: only http/1.1 is offered, and the wrapper costs a
    #: call per read
    protocol = ProxyChannel
    noisy = False
    #: set when the interceptor drains: each response then closes its
    #: connection (``Connection: close``), so clients move elsewhere
    draining = False

    def __init__(self, resource, **kw):
        kw.setdefault("requestFactory", StreamingRequest)
        super().__init__(resource, **kw)

