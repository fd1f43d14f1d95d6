"""
The proxy's HTTP/2 server: h2 by ALPN on the TLS listener, h2c with prior
knowledge on the plain one (the HTTP/1.1 protocol hands a connection over
when it sees the preface, L{H2_PREFACE}).

The protocol state machine is the C{h2} library's (sans-IO); the
connection, its streams and their flow control are the project's own, as
for HTTP/1.1.  twisted.web's HTTP/2 channel is not used: it buffers whole
request bodies, and a gRPC stream cannot wait for its end.

Each stream is one L{HTTP2Exchange} (an L{IDownstreamExchange}) handed to
the request path as soon as its HEADERS arrive, so each is one request in
``/queue``, the metrics and the cold-start hold.  Flow control runs end to
end:

 - a request body the upstream reads slowly is paused (L{RequestBody}),
   and a paused stream stops acknowledging what it receives: the client's
   window closes;
 - a response the client reads slowly stays queued here, within its
   stream's window, up to L{RESPONSE_HIGH_WATER}; beyond that the
   upstream producing it is paused, as is every stream's upstream while
   the client's TCP connection itself is backed up.

Abuse is bounded per connection (CVE-2023-44487 "rapid reset", and the
ping, settings and empty-frame floods): see L{FrameBudget}.  A connection
that overdraws one is sent GOAWAY (ENHANCE_YOUR_CALM) and closed; others
are not affected.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.downstream._body import NO_BODY, BodyRate, RequestBody
from keda_proxy.downstream._h2fields import (
    MalformedRequest,
    http_date,
    is_grpc,
    lower_fields,
    lower_trailers,
    request_fields,
    request_trailers,
    response_fields,
)
from keda_proxy.downstream._h2guard import AnsweredFrame, FrameBudget, ServerH2
from keda_proxy.downstream._handler import run_handler
from keda_proxy.interfaces import IDownstreamExchange
from keda_proxy.wire._h2state import release
from keda_proxy.wire._producers import steer
from keda_proxy.wire._status import status_text

__all__ = [
    "H2_PREFACE", "MAX_CONCURRENT_STREAMS", "MAX_HEADER_LIST_SIZE",
    "HTTP2Exchange", "HTTP2ServerConnection",
]

log = Logger()

#: What an h2c client with prior knowledge sends first (RFC 9113 §3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Streams a client may have open at once (Go's HTTP/2 server default).
MAX_CONCURRENT_STREAMS = 250
#: Largest request header list, decoded (Go's C{DefaultMaxHeaderBytes});
#: the header block itself is bounded by the C{h2} library's limit on
#: CONTINUATION frames (64 of at most 16 KiB each).
MAX_HEADER_LIST_SIZE = 1 << 20
#: The request-body window per stream, and for the whole connection: what
#: a client may send before the proxy acknowledges it.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
#: Response bytes queued per stream (beyond its window) before the
#: upstream producing them is paused.
RESPONSE_HIGH_WATER = 256 * 1024
#: Per connection: frames that cost the proxy work but carry no request
#: (PING, SETTINGS, PRIORITY, empty DATA, unknown types), as a burst and a
#: refill rate per second; and streams the client resets.
CONTROL_BURST, CONTROL_RATE = 1000, 100.0
RESET_BURST, RESET_RATE = 500, 100.0
#: After a GOAWAY that closes a connection, how long the client has to
#: read it before the connection is cut.
CLOSE_GRACE = 5.0

# -- one stream ------------------------------------------------------------


@implementer(IDownstreamExchange)
class HTTP2Exchange:
    """One stream: its request, and the response going back on it.

    The response HEADERS wait for the first body bytes or the end, so that
    a response without a body is one HEADERS frame with END_STREAM.
    """

    version = b"HTTP/2"
    code = None
    sent_bytes = 0
    finished = False
    response_started = False
    #: the response's HEADERS, waiting for the first body bytes
    _head = None
    #: response bytes waiting for the stream's window
    queued = 0
    #: after finish(): the trailers to send once the queue is out (or ())
    _ending = None
    _producer = None
    _producer_paused = False
    _on_done = None
    _result = None
    _over = False
    #: the client has sent its whole request (half-closed, remote)
    _request_done = False
    #: request bytes received while the body was paused, not acknowledged
    _unacked = 0
    _reading_paused = False
    #: the request's trailers, until its end
    trailers = None
    #: the minimum-rate watch of the request body (L{BodyRate})
    _body_rate = None

    def __init__(self, connection: "HTTP2ServerConnection", stream_id: int, method: bytes,
                 target: bytes, headers: dict, length):
        self._connection = connection
        self.stream_id = stream_id
        self.method = method
        self.target = target
        self.path = target.partition(b"?")[0]
        self.headers = headers
        self.scheme = connection.scheme
        self.client_address = connection.client_address
        self.client_port = connection.client_port
        self.response_headers = {}
        self._out = []
        if length == 0:
            self.body = NO_BODY
            self._request_done = True
        else:
            # the body's callbacks go through the connection: bound to this
            # exchange, they would make a cycle of every request with a body
            self.body = RequestBody(length, partial(connection.pause_stream, stream_id),
                                    partial(connection.resume_stream, stream_id))
            # a body trickled in would hold the request, and the route's
            # Concurrency, open: the rule HTTP/1.1 bodies follow; but a
            # gRPC stream's messages come when the application has them
            # (a watch, a chat), and a pause is no sign of abuse there
            if not is_grpc(headers):
                self._body_rate = BodyRate(connection.clock, self.body, self._body_too_slow,
                                           connection.now())

    # -- the request body ----------------------------------------------------

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._body_rate is not None:
            self._body_rate.refresh(self._connection.now())
        unacked, self._unacked = self._unacked, 0
        if unacked and not self._over:
            self._connection.acknowledge(self.stream_id, unacked)

    def request_ended(self) -> None:
        """The client sent END_STREAM: the body (if any) is whole."""
        self._request_done = True
        self._stop_body_rate()
        body = self.body
        if body is not NO_BODY and not body.done:
            body.end(self.trailers)

    def _stop_body_rate(self) -> None:
        watch, self._body_rate = self._body_rate, None
        if watch is not None:
            watch.cancel()

    def _body_too_slow(self) -> None:
        """The body fell below the minimum rate: 408, or a reset once the
        response has begun."""
        self._body_rate = None
        if self._over or self._request_done:
            return
        if self.response_started:
            self.abort()
        else:
            self.answer(408, [(b"content-type", b"text/plain; charset=utf-8")],
                        status_text(408) + b"\n")

    def data_received(self, data: bytes, flow_length: int) -> None:
        if data and self.body is not NO_BODY:
            self.body.data_received(data)
        if self._reading_paused:
            self._unacked += flow_length
        elif flow_length:
            self._connection.acknowledge(self.stream_id, flow_length)

    # -- the response --------------------------------------------------------
    #
    # Nothing is framed here: the head, the bytes and the end are queued,
    # and the connection frames them when it flushes (L{pump}), at the end
    # of the read or of the reactor turn in progress.  So a response that
    # is whole in one turn (most) is one HEADERS and one DATA carrying
    # END_STREAM, or one HEADERS with it.

    def respond(self, head) -> None:
        if self.finished:
            return
        if self.response_started or self._head is not None:
            raise RuntimeError("the response head is already out")
        self.code = head.code
        fields = [(b":status", b"%d" % head.code)]
        fields += response_fields(head.block)
        if not head.has_date:
            fields.append((b"date", http_date(self._connection.now())))
        self._extra_fields(fields)
        self._head = fields

    def _extra_fields(self, fields: list) -> None:
        for name, values in self.response_headers.items():
            name = name.lower()
            for value in values:
                fields.append((name, value))

    def write(self, data: bytes) -> None:
        if self.finished or self._ending is not None:
            return
        if not self.response_started:
            if self._head is None:
                raise RuntimeError("write() before respond()")
            self.response_started = True
            self._connection.send_queued(self)
        if not data or self.method == b"HEAD" or self.code in (204, 304):
            return
        self.sent_bytes += len(data)
        self._out.append(data)
        self.queued += len(data)
        self._connection.send_queued(self)

    def finish(self, trailers=None) -> None:
        if self.finished or self._ending is not None:
            return
        if not self.response_started:
            if self._head is None:
                raise RuntimeError("finish() before respond()")
            self.response_started = True
        self._ending = lower_trailers(trailers) if trailers else ()
        self._connection.send_queued(self)

    def answer(self, code: int, fields, body: bytes) -> None:
        """A whole response, with Content-Length; once a response has
        begun, only a reset is left."""
        if self.finished:
            return
        if self.response_started:
            self.abort()
            return
        self.code = code
        head = [(b":status", b"%d" % code), (b"date", http_date(self._connection.now()))]
        head += lower_fields(fields)
        self._extra_fields(head)
        if code in (204, 304) or self.method == b"HEAD":
            body = b""
        if code not in (204, 304):
            head.append((b"content-length", b"%d" % len(body)))
        self._head = head
        self.write(body)
        self.finish()

    def respond_whole(self, head, body: bytes) -> None:
        self.respond(head)
        self.write(body)
        self.finish()

    def informational(self, head) -> None:
        """A 1xx (103 Early Hints) ahead of the final response."""
        if self.code is None and self._head is None and not self.finished:
            fields = [(b":status", b"%d" % head.code)] + list(response_fields(head.block))
            self._connection.send_headers(self.stream_id, fields, False)

    def abort(self) -> None:
        """Reset the stream: the client sees the response cut short."""
        if self.finished:
            return
        self._connection.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        self.end(Failure(ConnectionAborted("stream reset")))

    def take_over(self):
        raise NotImplementedError("HTTP/2 has no 101 upgrades; WebSockets use HTTP/1.1")

    # -- framing, when the connection flushes -----------------------------------

    def pump(self, h2) -> bool:
        """Frame what is queued, as far as the stream's window (and the
        connection's) allows.  Returns whether the response is complete.

        @raise StreamClosedError, FlowControlError, ProtocolError: from
            C{h2}; the stream is gone.
        """
        stream_id = self.stream_id
        out = self._out
        ending = self._ending
        head = self._head
        if head is not None:
            if not self.response_started:
                return False
            self._head = None
            if not out and ending == ():
                h2.send_headers(stream_id, head, end_stream=True)
                return True
            h2.send_headers(stream_id, head)
        if out:
            frame = h2.max_outbound_frame_size
            while out:
                window = h2.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                first = out[0]
                size = min(window, frame)
                if len(first) <= size:
                    del out[0]
                    chunk = first
                else:
                    chunk = first[:size]
                    out[0] = first[size:]
                self.queued -= len(chunk)
                if not out and ending == ():
                    h2.send_data(stream_id, chunk, end_stream=True)
                    return True
                h2.send_data(stream_id, chunk)
            if out:
                self.update_producer()
                return False
        if ending is None:
            self.update_producer()
            return False
        if ending:
            h2.send_headers(stream_id, ending, end_stream=True)
        else:
            h2.end_stream(stream_id)
        return True

    def update_producer(self) -> None:
        """Pause or resume the upstream by how much is queued here and
        whether the client's connection is backed up."""
        producer = self._producer
        if producer is None:
            return
        self._producer_paused = steer(
            producer, self._producer_paused,
            self.queued > RESPONSE_HIGH_WATER or self._connection.write_paused)

    # -- the exchange's end -----------------------------------------------------

    def response_complete(self) -> None:
        """The response went out whole."""
        if not self._request_done:
            # RFC 9113 §8.1: the rest of the request is not wanted
            self._connection.reset(self.stream_id, ErrorCodes.NO_ERROR)
        self.end(None)

    def notify_done(self, callback) -> None:
        if self._over:
            callback(self._result)
        else:
            self._on_done = callback

    def end(self, result) -> None:
        """The exchange is over; only the first call counts."""
        if self._over:
            return
        self._over = self.finished = True
        self._result = result
        self._stop_body_rate()
        self._out = []
        self._producer = None
        unacked, self._unacked = self._unacked, 0
        if unacked:
            # bytes held back while the body was paused count against the
            # connection's window too: given back (h2 leaves a closed
            # stream's own window alone), or each such stream would close
            # the connection's window a little more, for good
            self._connection.acknowledge(self.stream_id, unacked)
        if result is not None and self.body is not NO_BODY and not self.body.done:
            self.body.detach()
        self._connection.stream_over(self)
        callback, self._on_done = self._on_done, None
        if callback is not None:
            callback(result)

    # -- IConsumer: the upstream produces the response body -----------------------

    def registerProducer(self, producer, streaming) -> None:
        if self.finished:
            return
        self._producer = producer
        self._producer_paused = False
        self.update_producer()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False


# -- the connection ----------------------------------------------------------


@implementer(IPushProducer)
class HTTP2ServerConnection:
    """One client connection speaking HTTP/2, taken over from the
    HTTP/1.1 protocol that accepted it (see L{attach}).

    It is the transport's producer: a client that stops reading pauses
    every stream's upstream.
    """

    max_concurrent_streams = MAX_CONCURRENT_STREAMS
    max_header_list_size = MAX_HEADER_LIST_SIZE
    stream_window = STREAM_WINDOW
    connection_window = CONNECTION_WINDOW
    control_burst, control_rate = CONTROL_BURST, CONTROL_RATE
    reset_burst, reset_rate = RESET_BURST, RESET_RATE
    close_grace = CLOSE_GRACE

    write_paused = False
    _closing = False
    _closed = False
    _in_receive = False
    _flush_call = None
    _idle_timer = None
    _close_timer = None

    def __init__(self, factory, transport, scheme: bytes, client_address: str,
                 client_port: int):
        self.factory = factory
        self.transport = transport
        self.scheme = scheme
        self.client_address = client_address
        self.client_port = client_port
        self._clock = self.clock = factory.reactor
        self.now = factory.reactor.seconds
        self._handler = factory.handler
        self.streams: Dict[int, HTTP2Exchange] = {}
        #: streams with frames to make at the next flush
        self._dirty: Dict[int, HTTP2Exchange] = {}
        self._highest = 0
        self._control = FrameBudget(self.control_burst, self.control_rate, self.now)
        self._resets = FrameBudget(self.reset_burst, self.reset_rate, self.now)
        h2 = self._h2 = ServerH2(H2Configuration(
            client_side=False, header_encoding=None,
            # checked by request_fields and request_trailers instead
            validate_inbound_headers=False, normalize_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            SettingCodes.ENABLE_PUSH: 0,
        })
        h2.decoder.max_header_list_size = self.max_header_list_size
        h2.initiate_connection()
        if self.connection_window > 65535:  # RFC 9113's initial window: h2 takes no 0
            h2.increment_flow_control_window(self.connection_window - 65535)

    def attach(self) -> None:
        """Start serving on the transport: it is now this connection's."""
        self.transport.registerProducer(self, True)
        self.factory.h2_connections.add(self)
        if self.factory.draining:
            self.drain()
        self._arm_idle()
        self._flush()

    # -- reading ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._in_receive = True
        try:
            try:
                events = self._h2.receive_data(data)
            except ProtocolError as e:
                # h2 queued a GOAWAY with the error's code
                log.info("HTTP/2 client {client}: {error}", client=self.client_address,
                         error=type(e).__name__)
                self._shut(None)
                return
            for event in events:
                handler = _DISPATCH.get(type(event))
                if handler is not None:
                    handler(self, event)
                if self._closed:
                    return
        finally:
            self._in_receive = False
        self._flush()

    def request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        self._highest = stream_id
        if self._closing:
            self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            method, target, authority, headers, cookies = request_fields(event.headers)
        except MalformedRequest:
            self._h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        if cookies:  # RFC 9113 §8.2.3: crumbs joined again for HTTP/1.1
            headers[b"Cookie"] = [b"; ".join(cookies)]
        host = headers.get(b"Host")
        if authority is not None:
            headers[b"Host"] = [authority]
        length = None
        if event.stream_ended is not None:
            length = 0
        else:
            declared = headers.get(b"Content-Length")
            if declared and len(declared) == 1 and declared[0].isdigit():
                length = int(declared[0])
                if length == 0:
                    length = None  # DATA may still come: let its end tell
        exchange = HTTP2Exchange(self, stream_id, method, target or b"", headers, length)
        self.streams[stream_id] = exchange
        self._disarm_idle()
        if method == b"CONNECT":  # not a tunnel: never an open proxy
            code = 405
        elif target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
            code = 400
        elif authority is not None and host is not None and host != [authority]:
            code = 400  # RFC 9113 §8.3.1: which one names the site?
        else:
            code = None
        if code is not None:
            exchange.answer(code, [(b"content-type", b"text/plain; charset=utf-8")],
                            status_text(code) + b"\n")
            return
        run_handler(self._handler, exchange)

    def data_frame(self, event: DataReceived) -> None:
        if not event.data and event.stream_ended is None and not self._control.spend():
            self._calm("empty DATA frames")
            return
        exchange = self.streams.get(event.stream_id)
        if exchange is None or exchange.finished:
            # the response is over: count the bytes, want no more
            self.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        exchange.data_received(event.data, event.flow_controlled_length)

    def trailers_received(self, event: TrailersReceived) -> None:
        exchange = self.streams.get(event.stream_id)
        if exchange is None:
            return
        try:
            exchange.trailers = request_trailers(event.headers)
        except MalformedRequest:
            self._h2.reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
            exchange.end(Failure(ConnectionAborted("malformed trailers")))

    def stream_ended(self, event: StreamEnded) -> None:
        exchange = self.streams.get(event.stream_id)
        if exchange is None:
            return
        exchange.request_ended()

    def stream_reset(self, event: StreamReset) -> None:
        # not only the client's own: a reset h2 makes for a client's error on
        # a stream (a WINDOW_UPDATE overflowing its window, DATA after its
        # END_STREAM) costs the handler's work just the same ("MadeYouReset",
        # CVE-2025-8671)
        if not self._resets.spend():
            self._calm("stream resets")
            return
        exchange = self.streams.get(event.stream_id)
        if exchange is not None:
            exchange.end(Failure(ConnectionLost("the client reset the stream")))

    def window_updated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            exchange = self.streams.get(event.stream_id)
            if exchange is not None and exchange.queued:
                self._dirty[event.stream_id] = exchange
        else:
            for stream_id, exchange in self.streams.items():
                if exchange.queued:
                    self._dirty[stream_id] = exchange

    def settings_changed(self, event: RemoteSettingsChanged) -> None:
        if not self._control.spend():
            self._calm("SETTINGS frames")
            return
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream_id, exchange in self.streams.items():
                if exchange.queued:
                    self._dirty[stream_id] = exchange

    def control_frame(self, event) -> None:
        if not self._control.spend():
            self._calm(type(event).__name__)

    def goaway_received(self, event: ConnectionTerminated) -> None:
        """The client sent GOAWAY: it opens no more streams, and those it
        opened may still finish (see L{ServerH2}); with an error code, it
        is going now."""
        self._closing = True
        if event.error_code != ErrorCodes.NO_ERROR:
            self._shut(Failure(ConnectionLost("the client sent GOAWAY")))
        elif not self.streams:
            self._shut(None)

    # -- writing ------------------------------------------------------------------

    def send_headers(self, stream_id: int, fields, end: bool) -> None:
        try:
            self._h2.send_headers(stream_id, fields, end_stream=end)
        except (StreamClosedError, ProtocolError):
            return
        self._flush_soon()

    def send_queued(self, exchange: HTTP2Exchange) -> None:
        """The stream has something to send: it is framed at the flush."""
        self._dirty[exchange.stream_id] = exchange
        self._flush_soon()

    def _pump(self) -> None:
        h2 = self._h2
        dirty = self._dirty
        while dirty:
            _, exchange = dirty.popitem()
            if exchange.finished:
                continue
            try:
                complete = exchange.pump(h2)
            except (StreamClosedError, FlowControlError, ProtocolError):
                exchange.end(Failure(ConnectionLost("the stream closed")))
                continue
            if complete:
                exchange.response_complete()

    def reset(self, stream_id: int, code) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except (StreamClosedError, ProtocolError):
            return
        self._flush_soon()

    def pause_stream(self, stream_id: int) -> None:
        """A stream's body is paused: see L{HTTP2Exchange.pause_reading}."""
        exchange = self.streams.get(stream_id)
        if exchange is not None:
            exchange.pause_reading()

    def resume_stream(self, stream_id: int) -> None:
        exchange = self.streams.get(stream_id)
        if exchange is not None:
            exchange.resume_reading()

    def acknowledge(self, stream_id: int, length: int) -> None:
        if self._closed:
            return
        try:
            self._h2.acknowledge_received_data(length, stream_id)
        except (StreamClosedError, ProtocolError):
            return
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write what h2 has queued: at the end of the read in progress, or
        at the end of this reactor turn, so that frames made together (a
        response's HEADERS, DATA and trailers; many streams' answers) go
        out in one write."""
        if self._in_receive or self._flush_call is not None or self._closed:
            return
        self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._dirty:
            self._pump()
        data = self._h2.data_to_send()
        if data and not self._closed:
            self.transport.write(data)

    # -- the streams' ends, idling, draining, closing ------------------------------

    def stream_over(self, exchange: HTTP2Exchange) -> None:
        self.streams.pop(exchange.stream_id, None)
        self._dirty.pop(exchange.stream_id, None)
        if not self.streams:
            if self._closing:
                self._shut(None)
            else:
                self._arm_idle()

    def _arm_idle(self) -> None:
        timeout = self.factory.idle_timeout
        if timeout and self._idle_timer is None and not self._closed:
            self._idle_timer = self._clock.callLater(timeout, self._idle)

    def _disarm_idle(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self._idle_timer = None
        if not self.streams and not self._closed:
            self._h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self._highest)
            self._shut(None)

    def drain(self) -> None:
        """The interceptor drains: GOAWAY now, streams in flight finish,
        then the connection closes.

        The GOAWAY is framed here, not by h2's C{close_connection}: that
        puts h2 in its CLOSED state, where every later frame from the
        client is a protocol error (python-hyper/h2#1181) -- the
        WINDOW_UPDATE a response in flight waits for, its request's DATA, a
        PING -- and would cut the very streams draining lets finish.  New
        streams are refused (L{request_received})."""
        if self._closing or self._closed:
            return
        self._flush()  # h2's frames first: on a new connection, its SETTINGS
        self._closing = True
        self.transport.write(GoAwayFrame(
            0, last_stream_id=self._highest, error_code=ErrorCodes.NO_ERROR).serialize())
        if not self.streams:
            self._shut(None)

    def _calm(self, what: str) -> None:
        """A flood: GOAWAY (ENHANCE_YOUR_CALM) and close, cutting the
        streams in flight."""
        log.info("HTTP/2 client {client}: too many {what}; closing",
                 client=self.client_address, what=what)
        self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._highest)
        self._shut(Failure(ConnectionAborted(f"too many {what}")))

    def _shut(self, reason: Optional[Failure]) -> None:
        """Write what is queued (a GOAWAY) and close; streams still open
        end with C{reason}."""
        if self._closed:
            return
        self._flush()
        self._closed = self._closing = True
        self._disarm_idle()
        for exchange in list(self.streams.values()):
            exchange.end(reason or Failure(ConnectionDone()))
        self.streams.clear()
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._close_timer = self._clock.callLater(self.close_grace, self.transport.abortConnection)

    def connectionLost(self, reason=None) -> None:
        self._closed = self._closing = True
        self._disarm_idle()
        for call in (self._flush_call, self._close_timer):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._close_timer = None
        self.factory.h2_connections.discard(self)
        for exchange in list(self.streams.values()):
            exchange.end(reason if reason is not None else Failure(ConnectionDone()))
        self.streams.clear()
        self._dirty.clear()
        release(self._h2)
        # the transport may keep its producer (this) after its end: no cycle
        self.transport = None

    # -- IPushProducer: the client's TCP connection backs up, or drains -------------

    def pauseProducing(self) -> None:
        self.write_paused = True
        for exchange in list(self.streams.values()):
            exchange.update_producer()

    def resumeProducing(self) -> None:
        self.write_paused = False
        for exchange in list(self.streams.values()):
            exchange.update_producer()

    def stopProducing(self) -> None:
        """connectionLost follows."""


#: h2's events, to the connection's handlers (the rest need nothing)
_DISPATCH = {
    RequestReceived: HTTP2ServerConnection.request_received,
    DataReceived: HTTP2ServerConnection.data_frame,
    TrailersReceived: HTTP2ServerConnection.trailers_received,
    StreamEnded: HTTP2ServerConnection.stream_ended,
    StreamReset: HTTP2ServerConnection.stream_reset,
    WindowUpdated: HTTP2ServerConnection.window_updated,
    RemoteSettingsChanged: HTTP2ServerConnection.settings_changed,
    PingReceived: HTTP2ServerConnection.control_frame,
    PriorityUpdated: HTTP2ServerConnection.control_frame,
    UnknownFrameReceived: HTTP2ServerConnection.control_frame,
    ConnectionTerminated: HTTP2ServerConnection.goaway_received,
    AnsweredFrame: HTTP2ServerConnection.control_frame,
}
