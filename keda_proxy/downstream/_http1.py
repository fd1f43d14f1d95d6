"""
The proxy's side facing clients: an HTTP/1.1 server protocol of its own.

A proxy must not buffer a request body before it starts forwarding: a
1 GiB upload has to flow upstream as it arrives, with a slow upstream
slowing the client down.  So each request's handler runs as soon as its
head is parsed, and the body follows through a L{RequestBody}.  Each
request is one L{HTTP1Exchange} (an L{IDownstreamExchange}); a connection
answers them one at a time, in order.

Only Twisted's public interfaces are used (C{Protocol}, C{IPushProducer},
the transport's methods, the reactor's clock), so that the parser, its
limits and its timers are the project's own, with Go's strictness: see
L{keda_proxy.downstream._head} for what a head may hold.  Timers are per
connection, not per request: an idle timer that looks at when bytes last
came, a head deadline checked as bytes arrive, and a body-rate timer only
for requests with a body.
"""

from __future__ import annotations

import socket
from typing import Optional

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from zope.interface import implementer

from keda_proxy._tls import ALPN_H2
from keda_proxy.downstream._body import (
    BODY_GRACE,
    BODY_HIGH_WATER,
    BODY_MIN_RATE,
    NO_BODY,
    BodyRate,
    RequestBody,
)
from keda_proxy.downstream._handler import run_handler
from keda_proxy.downstream._head import (
    MAX_HEAD_SIZE,
    HeadError,
    oversized,
    parse_head,
    parse_request_line,
)
from keda_proxy.downstream._http2 import H2_PREFACE, HTTP2ServerConnection
from keda_proxy.interfaces import IDownstreamExchange
from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError, CountedDecoder
from keda_proxy.wire._headers import BadTrailer, connection_tokens, trailer_fields
from keda_proxy.wire._outbox import Writer
from keda_proxy.wire._status import refusal, status_text

__all__ = [
    "BODY_GRACE", "BODY_HIGH_WATER", "BODY_MIN_RATE", "HEAD_TIMEOUT", "IDLE_TIMEOUT",
    "MAX_HEAD_SIZE", "HTTP1Exchange", "HTTP1ServerFactory", "HTTP1ServerProtocol",
    "RequestBody", "listen_backlog", "parse_request_line",
]


#: Time allowed to send a complete request head (checked as bytes arrive;
#: a client that goes silent meets the idle timeout instead).
HEAD_TIMEOUT = 30.0
#: A connection with nothing to answer closes after this long without
#: bytes from the client (twisted.web's default, which the proxy had).
IDLE_TIMEOUT = 60.0
#: After an idle close, a client that does not take it is cut this much
#: later (as twisted.web does).
ABORT_TIMEOUT = 15.0
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


#: responses that never have a body, whatever their head says
_NO_BODY_CODES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_date_cache = [None, b""]


def _date_line(now: float) -> bytes:
    """The ``Date`` header line for now, formatted once per second."""
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[1] = b"Date: " + datetimeToString(second) + b"\r\n"
        _date_cache[0] = second
    return _date_cache[1]


def _field_lines(fields) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in fields)


#: an exchange's result before it is over
_PENDING = object()


@implementer(IDownstreamExchange)
class HTTP1Exchange:
    """One request on an HTTP/1.1 connection, and its response.

    A plain class with class-level defaults: one is made for every request.
    The response head is written with the first body bytes (or the end),
    in one C{write}.

    @ivar keep_alive: whether the connection serves another request after
        this one.
    @ivar response_started: whether any of the response went out.
    """

    code = None
    sent_bytes = 0
    finished = False
    response_started = False
    #: the response head, waiting for the first body bytes
    _head = None
    _chunked = False
    _bodiless = False
    _taken = False
    _on_done = None
    _result = _PENDING

    def __init__(self, channel: "HTTP1ServerProtocol", method: bytes, target: bytes,
                 version: bytes, headers: dict, body, keep_alive: bool, close_asked: bool):
        self._channel = channel
        self.method = method
        self.target = target
        self.path = target.partition(b"?")[0]
        self.version = version
        self.headers = headers
        self.body = body
        self.scheme = channel.scheme
        self.client_address = channel.client_address
        self.client_port = channel.client_port
        self.response_headers = {}
        self.keep_alive = keep_alive
        self._close_asked = close_asked

    # -- the response ---------------------------------------------------------

    def respond(self, head) -> None:
        """The upstream's status and header lines (as they are), then ours;
        written with the first body bytes."""
        if self.finished:
            return
        if self.response_started:
            raise RuntimeError("the response head is already out")
        code = self.code = head.code
        parts = [self.version, b" %d " % code, head.phrase, b"\r\n", head.block]
        if not head.has_date:
            parts.append(_date_line(self._channel.now()))
        if self.response_headers:
            for name, values in self.response_headers.items():
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        parts.append(self._head_end(code, head.length is not None))
        self._head = b"".join(parts)

    def respond_whole(self, head, body: bytes) -> None:
        """L{respond}, L{write} and L{finish} in one: the head and the body
        in one send, and the connection goes on to its next request."""
        self.respond(head)
        out = self._head
        if out is None:  # the client is gone
            return
        self._head = None
        self.response_started = True
        if body and not self._bodiless:
            self.sent_bytes = len(body)
            out += body
        self._channel.send(out)
        self._channel.response_done(self)

    def _head_end(self, code: int, length_known: bool) -> bytes:
        """The head's last lines: the framing and Connection fields that
        this response and the client's request call for, and the blank line.
        Decides whether the connection is kept."""
        version = self.version
        if self.method == b"HEAD" or code in _NO_BODY_CODES:
            self._bodiless = length_known = True
            tail = b""
        elif not length_known and version == b"HTTP/1.1":
            self._chunked = True
            tail = b"Transfer-Encoding: chunked\r\n"
        else:
            tail = b""
        if self.keep_alive:
            if self._channel.factory._draining:  # as Go's server while it shuts down
                self.keep_alive = False
                return tail + b"Connection: close\r\n\r\n"
            if version == b"HTTP/1.0":
                # the client asked for keep-alive: said back when the length
                # is known, else the body ends with the connection
                if length_known:
                    return tail + b"Connection: keep-alive\r\n\r\n"
                self.keep_alive = False
        elif self._close_asked:
            return tail + b"Connection: close\r\n\r\n"
        return tail + b"\r\n"

    def write(self, data: bytes) -> None:
        if self.finished or self._taken:
            return
        head = self._head
        if head is not None:
            self._head = None
            self.response_started = True
            if self._bodiless or not data:
                self._channel.send(head)
                return
        elif self._bodiless or not data:
            return
        elif not self.response_started:
            raise RuntimeError("write() before respond()")
        self.sent_bytes += len(data)
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._channel.send(data if head is None else head + data)

    def finish(self, trailers=None) -> None:
        if self.finished:
            return
        if self._taken:  # the tunnel closed
            self.end(None)
            return
        out = self._head
        if out is None:
            if not self.response_started:
                raise RuntimeError("finish() before respond()")
            out = b""
        else:
            self._head = None
            self.response_started = True
        if self._chunked:
            out += b"0\r\n%s\r\n" % _field_lines(trailers) if trailers else b"0\r\n\r\n"
        if out:
            self._channel.send(out)
        self._channel.response_done(self)

    def answer(self, code: int, fields, body: bytes) -> None:
        """A whole response, with Content-Length, in one write; once a
        response has begun, only a cut is left."""
        if self.finished or self._taken:
            return
        if self.response_started:
            self.abort()
            return
        self.code = code
        self._head = None
        self._chunked = self._bodiless = False
        parts = [self.version, b" %d " % code, status_text(code), b"\r\n",
                 _date_line(self._channel.now())]
        for name, value in fields:
            parts += (name, b": ", value, b"\r\n")
        if self.response_headers:
            for name, values in self.response_headers.items():
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        if code not in _NO_BODY_CODES:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(self._head_end(code, True))
        if not self._bodiless:
            parts.append(body)
            self.sent_bytes = len(body)
        self.response_started = True
        self._channel.send(b"".join(parts))
        self._channel.response_done(self)

    def informational(self, head) -> None:
        """A 1xx (103 Early Hints) ahead of the response, to HTTP/1.1
        clients only (RFC 9110 §15.2)."""
        if self.code is None and not self.finished and self.version == b"HTTP/1.1":
            self._channel.send(
                b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.code, head.phrase, head.block))

    def abort(self) -> None:
        if self.finished:
            return
        self._channel.transport.abortConnection()
        self._channel.cut(self)

    # -- the exchange's end -----------------------------------------------------

    def notify_done(self, callback) -> None:
        result = self._result
        if result is _PENDING:
            self._on_done = callback
        else:
            callback(result)

    def end(self, result) -> None:
        """The exchange is over: C{None} when its response went out, else a
        Failure.  Called by the connection; only the first call counts."""
        if self._result is not _PENDING:
            return
        self.finished = True
        self._result = result
        callback = self._on_done
        if callback is not None:
            self._on_done = None
            callback(result)

    # -- IConsumer: the upstream, as the response body's producer --------------

    def registerProducer(self, producer, streaming) -> None:
        if not self.finished:
            self._channel.register_producer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._channel.unregister_producer()

    # -- upgrades ---------------------------------------------------------------

    def take_over(self):
        """The client's transport and the bytes that came past the request,
        for a byte tunnel after a 101.  The connection parses nothing more
        and its timers stop; the transport may be paused, and the caller
        resumes it once its own protocol is in place.  L{finish} or
        L{abort} then end the exchange."""
        if self.finished or self._taken:
            raise RuntimeError("the exchange is over")
        self._taken = True
        self.code = 101
        self.response_started = True
        return self._channel.hand_over()


# connection states, in order: parsing is over from _CLOSING on
_HEAD, _BODY, _WAIT, _CLOSING, _CLOSED, _TAKEN = range(6)
#: why reading from the client is paused (bits)
_BODY_HELD, _PIPELINED = 1, 2


@implementer(IPushProducer)
class HTTP1ServerProtocol(Protocol):
    """One client connection: reads requests one at a time, hands each to
    the factory's handler as soon as its head is in, and answers them in
    order.

    Bytes past a request (a pipelined next one) wait until its response is
    complete, with the transport paused meanwhile.  As the transport's
    producer, it passes the client's flow control on to the producer of
    the response in progress.
    """

    head_timeout = HEAD_TIMEOUT
    body_grace = BODY_GRACE
    body_min_rate = BODY_MIN_RATE
    abort_timeout = ABORT_TIMEOUT

    _state = _HEAD
    #: bytes received and not parsed yet
    _pending = b""
    #: a head arriving in pieces (a bytearray), or None
    _head_buf = None
    #: when the head being read began (for a new connection, the
    #: connection itself, as in Go), or None when no head has begun
    _head_started: Optional[float] = None
    _exchange: Optional[HTTP1Exchange] = None
    _body = None
    _decoder = None
    _busy = False
    _read_paused = 0
    _write_paused = False
    _producer = None
    _pull_producer = False
    #: whether this protocol (or a pull producer in its place) is registered
    #: with the transport
    _registered = False
    _idle_timer = None
    _abort_timer = None
    #: the minimum-rate watch of the body being read (L{BodyRate})
    _body_rate = None
    #: when bytes last came from the client, or a response last ended
    _active_at = 0.0
    scheme = b"http"
    client_address = "unknown"
    client_port = 0
    #: the start of what might be h2c's preface
    _sniffed = b""

    def __init__(self, factory: "HTTP1ServerFactory"):
        self.factory = factory
        self._handler = factory.handler
        self._clock = factory.reactor
        self.now = factory.reactor.seconds
        self.idle_timeout = factory.idle_timeout

    def send(self, data: bytes) -> None:
        """Write to the client; once connected, through the connection's
        L{Writer}: at once, or with the turn's other writes at its end."""
        self.transport.write(data)

    def connectionMade(self):
        transport = self.transport
        self._active_at = self._head_started = self.now()
        peer = transport.getPeer()
        self.client_address = getattr(peer, "host", None) or "unknown"
        self.client_port = getattr(peer, "port", None) or 0
        if ISSLTransport.providedBy(transport):
            self.scheme = b"https"
        self._writer = Writer(transport, self._clock)
        self.send = self._writer.write
        transport.registerProducer(self, True)
        self._registered = True
        if self.idle_timeout:
            self._idle_timer = self._clock.callLater(self.idle_timeout, self._idle_check)
        self.dataReceived = self._first_bytes  # until the protocol is known

    def _first_bytes(self, data: bytes) -> None:
        """A connection's first bytes tell its protocol: HTTP/2 when TLS
        negotiated ``h2`` or when they are h2c's preface (prior knowledge,
        on the same port), else HTTP/1.1."""
        seen = self._sniffed + data
        if self.scheme == b"http" and len(seen) < len(H2_PREFACE) \
                and H2_PREFACE.startswith(seen):
            self._sniffed = seen
            return
        self._sniffed = b""
        del self.dataReceived
        if seen.startswith(H2_PREFACE) if self.scheme == b"http" \
                else getattr(self.transport, "negotiatedProtocol", None) == ALPN_H2:
            self._to_http2(seen)
        else:
            self.dataReceived(seen)

    def _to_http2(self, data: bytes) -> None:
        """Hand the connection to an L{HTTP2ServerConnection}, which from
        now on gets its bytes and its end."""
        transport, _ = self.hand_over()
        connection = HTTP2ServerConnection(
            self.factory, transport, self.scheme, self.client_address, self.client_port)
        self.dataReceived = connection.dataReceived
        self.connectionLost = connection.connectionLost
        connection.attach()
        connection.dataReceived(data)

    # -- reading ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        now = self._active_at = self.now()
        state = self._state
        if state == _HEAD:
            started = self._head_started
            if started is not None and now - started >= self.head_timeout:
                # a head that takes too long is refused when its next bytes
                # arrive: no timer per request
                self._refuse(408)
                return
            if not self._pending and self._head_buf is None and not self._busy:
                end = data.find(b"\r\n\r\n")
                if end > 0:  # the usual case: a whole head, alone, in one read
                    self._busy = True
                    try:
                        self._start_request(data[:end], data[end + 4:])
                    finally:
                        self._busy = False
                    if self._pending or self._read_paused & _PIPELINED:
                        self._run()
                    return
        elif state == _CLOSING or state == _CLOSED:
            return
        if self._pending:
            self._pending += data
        else:
            self._pending = data
        if not self._busy:
            self._run()

    def _run(self) -> None:
        """Parse what is pending, as far as the state allows."""
        self._busy = True
        try:
            while self._pending:
                state = self._state
                if state == _HEAD:
                    data, self._pending = self._pending, b""
                    self._read_head(data)
                elif state == _BODY:
                    data, self._pending = self._pending, b""
                    try:
                        self._decoder.dataReceived(data)
                    except ChunkedError:
                        self._bad_body()
                else:
                    break
        finally:
            self._busy = False
        if self._state == _WAIT and self._pending:
            # a pipelined request waits for this one's answer: read no more
            self._pause_reading(_PIPELINED)
        elif self._read_paused & _PIPELINED:
            self._resume_reading(_PIPELINED)

    def _read_head(self, data: bytes) -> None:
        buf = self._head_buf
        if buf is None:
            end = data.find(b"\r\n\r\n")
            if end > 0:  # the usual case: a whole head in one read
                self._start_request(data[:end], data[end + 4:])
                return
            if end == 0:
                self._refuse(400)
                return
            if self._head_started is None:  # a keep-alive connection's next head
                self._head_started = self.now()
            buf = self._head_buf = bytearray(data)
            end = -1
        else:
            scanned = len(buf) - 3
            buf += data
            end = buf.find(b"\r\n\r\n", scanned if scanned > 0 else 0)
        if end < 0:
            code = oversized(buf)
            if code is not None:
                self._refuse(code)
            return
        self._head_buf = None
        if end == 0:
            self._refuse(400)
            return
        self._start_request(bytes(buf[:end]), bytes(buf[end + 4:]))

    def _start_request(self, head: bytes, rest: bytes) -> None:
        if head[:2] == b"\r\n":
            head = head[2:]  # one empty line ahead of a request is tolerated
        try:
            method, target, version, headers, length = parse_head(head)
        except HeadError as e:
            self._refuse(e.code)
            return
        self._head_started = None
        close_asked = False
        if version == b"HTTP/1.1":
            keep_alive = True
            if b"Connection" in headers and b"close" in connection_tokens(headers):
                keep_alive = False
                close_asked = True
        else:
            # HTTP/1.0: kept only when asked for (``ab -k``, some load
            # balancers' checks), and only if the response's length is known
            tokens = connection_tokens(headers)
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        if length == 0:
            body = NO_BODY
            self._state = _WAIT
        else:
            body = self._body = RequestBody(length, self._pause_body, self._resume_body)
            if length is None:
                self._decoder = ChunkedDecoder(self._body_data, self._body_done)
            else:
                self._decoder = CountedDecoder(length, self._body_data, self._body_done)
            self._state = _BODY
            self._watch_body(body)
        exchange = self._exchange = HTTP1Exchange(
            self, method, target, version, headers, body, keep_alive, close_asked)
        self._pending = rest + self._pending
        run_handler(self._handler, exchange)
        if length != 0 and version == b"HTTP/1.1" and exchange.code is None \
                and not exchange.finished and self._state == _BODY:
            expect = headers.get(b"Expect")
            if expect and expect[0].lower() == b"100-continue":
                # only now: a request answered at once gets no 100
                self.send(_CONTINUE)

    # -- the request body ---------------------------------------------------------

    def _body_data(self, data: bytes) -> None:
        if self._state == _BODY:
            self._body.data_received(data)

    def _body_done(self, rest: bytes) -> None:
        if self._state != _BODY:
            return  # its response ended it already
        try:
            trailers = trailer_fields(getattr(self._decoder, "trailers", ()))
        except BadTrailer:
            self._bad_body()
            return
        self._decoder = None
        body, self._body = self._body, None
        self._cancel_body_timer()
        self._state = _WAIT
        self._pending = rest + self._pending
        if body.paused:  # nothing more to hold back
            body.paused = False
            self._resume_reading(_BODY_HELD)
        body.end(trailers)

    def _bad_body(self) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.response_started:
            self.transport.abortConnection()  # a 400 cannot follow a response
            self.cut(exchange)
        else:
            self._refuse(400)

    def _pause_body(self) -> None:
        self._pause_reading(_BODY_HELD)

    def _resume_body(self) -> None:
        """The proxy lets a body it held back flow again: the client's idle
        time and its body grace start from now."""
        now = self._active_at = self.now()
        if self._body_rate is not None:
            self._body_rate.refresh(now)
        self._resume_reading(_BODY_HELD)

    def _watch_body(self, body: RequestBody) -> None:
        """Cut the body's connection if it stops coming at the minimum
        rate; one timer per request with a body."""
        self._body_rate = BodyRate(self._clock, body, self._bad_body_rate, self._active_at,
                                   self.body_grace, self.body_min_rate)

    def _bad_body_rate(self) -> None:
        self._body_rate = None
        if self._state != _BODY:
            return
        exchange = self._exchange
        if exchange is not None and exchange.response_started:
            self.transport.abortConnection()  # a response is under way: only a cut is left
            self.cut(exchange)
        else:
            self._refuse(408)

    def _cancel_body_timer(self) -> None:
        watch, self._body_rate = self._body_rate, None
        if watch is not None:
            watch.cancel()

    # -- flow control -------------------------------------------------------------

    def _pause_reading(self, why: int) -> None:
        if not self._read_paused and self._state < _CLOSING:
            self.transport.pauseProducing()
        self._read_paused |= why

    def _resume_reading(self, why: int) -> None:
        if self._read_paused & why:
            self._read_paused &= ~why
            if not self._read_paused and self._state < _CLOSING:
                self.transport.resumeProducing()

    # IPushProducer, for the transport: the client reads slowly, or again
    def pauseProducing(self) -> None:
        self._write_paused = True
        producer = self._producer
        if producer is not None and not self._pull_producer:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._write_paused = False
        producer = self._producer
        if producer is not None and not self._pull_producer:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going: L{connectionLost} follows."""

    def register_producer(self, producer, streaming: bool) -> None:
        """The producer of the response in progress (for its exchange)."""
        self._producer = producer
        if not streaming:
            # a pull producer is the transport's to drive, for as long as
            # it is registered
            self._pull_producer = True
            self.transport.unregisterProducer()
            self.transport.registerProducer(producer, False)
        elif self._write_paused:
            producer.pauseProducing()

    def unregister_producer(self) -> None:
        self._producer = None
        if self._pull_producer:
            self._pull_producer = False
            if self._registered:
                self.transport.unregisterProducer()
                self.transport.registerProducer(self, True)

    # -- the end of an exchange -------------------------------------------------

    def response_done(self, exchange: HTTP1Exchange) -> None:
        """Its exchange's response is out: go on with the next request, or
        close."""
        self._active_at = self.now()  # idle from now on
        if self._producer is not None:
            self.unregister_producer()
        keep_alive = exchange.keep_alive
        if self._state == _BODY:
            # the response is done before its request body: the rest of the
            # body cannot be told from a next request, so close afterwards
            keep_alive = False
            self._cancel_body_timer()
            self._body.detach()
            self._body = self._decoder = None
        self._exchange = None
        if not keep_alive:
            self._closing()
            self._writer.lose()
        else:
            self._state = _HEAD
        exchange.end(None)
        if self._state == _HEAD and not self._busy and (self._pending or self._read_paused):
            self._run()

    def cut(self, exchange: HTTP1Exchange) -> None:
        """Its exchange was cut short (the transport aborted): stop."""
        self._closing()
        if self._exchange is exchange:
            self._exchange = None
        exchange.end(Failure(ConnectionAborted()))

    def _closing(self) -> None:
        """Parse nothing more, and stop the timers; the close is under way."""
        self._state = _CLOSING
        self._pending = b""
        self._head_buf = None
        self._body = self._decoder = None
        self._cancel_body_timer()
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._registered:
            # no flow control is left to do; and a TLS transport closes only
            # once no producer is registered
            self._registered = False
            self.transport.unregisterProducer()

    def hand_over(self):
        """For L{HTTP1Exchange.take_over}: the transport and what is unread."""
        pending = self._pending
        self._writer.flush()  # the new owner writes to the transport itself
        self._closing()
        self._state = _TAKEN
        self._producer = None
        self._read_paused = 0
        return self.transport, pending

    def _refuse(self, code: int) -> None:
        """Answer a request we will not read (Go's plain-text answer), then
        hang up."""
        exchange = self._exchange
        self._exchange = None
        self._closing()
        transport = self.transport
        if not transport.disconnecting:
            self.send(refusal(code))
            self._writer.lose()
        if exchange is not None:
            exchange.end(Failure(ConnectionAborted(f"request refused with {code}")))

    def _idle_check(self) -> None:
        self._idle_timer = None
        state = self._state
        if state >= _CLOSING:
            return
        period = self.idle_timeout
        if state == _WAIT or self._read_paused & _BODY_HELD:
            # a whole request is in and being answered, or the proxy itself
            # holds the body back (a slow upstream): look again later
            self._idle_timer = self._clock.callLater(period, self._idle_check)
            return
        idle = self.now() - self._active_at
        if idle < period:  # active since: wait out the rest
            self._idle_timer = self._clock.callLater(period - idle, self._idle_check)
            return
        exchange = self._exchange
        self._exchange = None
        self._closing()
        self._writer.lose()
        self._abort_timer = self._clock.callLater(self.abort_timeout,
                                                  self.transport.abortConnection)
        if exchange is not None:
            exchange.end(Failure(ConnectionAborted("idle timeout")))

    def connectionLost(self, reason=None):
        if self._state == _TAKEN:
            return
        exchange = self._exchange
        self._exchange = None
        self._closing()
        self._state = _CLOSED
        self._producer = None
        timer, self._abort_timer = self._abort_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if exchange is not None:
            exchange.end(reason if reason is not None else Failure(ConnectionDone()))


class HTTP1ServerFactory(ServerFactory):
    """Makes an L{HTTP1ServerProtocol} for each client connection.

    @param handler: called with each request's L{HTTP1Exchange} as soon as
        its head is parsed.
    @param reactor: the clock for timers and ``Date``.
    @param idle_timeout: seconds a connection with nothing to answer stays
        open without bytes from the client (0: forever).
    """

    protocol = HTTP1ServerProtocol
    noisy = False
    _draining = False

    def __init__(self, handler, reactor=None, idle_timeout: float = IDLE_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor
        self.handler = handler
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        #: the connections speaking HTTP/2, to send GOAWAY when draining
        self.h2_connections = set()

    @property
    def draining(self) -> bool:
        """Set when the interceptor drains: each HTTP/1.1 response then
        closes its connection (``Connection: close``), and each HTTP/2
        connection gets GOAWAY and closes once its streams finish, so
        clients move elsewhere."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value:
            for connection in list(self.h2_connections):
                connection.drain()

    def buildProtocol(self, addr) -> HTTP1ServerProtocol:
        return HTTP1ServerProtocol(self)
