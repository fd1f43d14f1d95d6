# -*- test-case-name: tests.test_http2_client -*-
"""
An HTTP/2 client connection for the forwarding path: many exchanges at
once on one connection, a stream each, on the sans-IO C{h2} library.

Spoken, as Go's interceptor speaks it, to a Service port whose
C{appProtocol} is C{kubernetes.io/h2c} (HTTP/2 in clear text, with prior
knowledge) and to a TLS upstream that picks C{h2} by ALPN
(L{keda_proxy.upstream._alpn}).  Each request is an L{H2Stream}, an
L{IUpstreamExchange} as the HTTP/1.1 connection is one, so the request
path does not tell them apart: the HTTP/1.1-syntax request head the proxy
built becomes a HEADERS frame, and the response's HEADERS the same
L{ResponseHead}, its trailing HEADERS the response's trailers (gRPC's
C{grpc-status}); see L{keda_proxy.upstream._h2fields}.

Flow control, per stream, both ways:

 - response bodies: a stream's window (L{STREAM_WINDOW}) is handed back
   only as the client takes the data.  A paused stream (a slow client)
   stops acknowledging what arrives, so the upstream stops sending on it:
   the proxy holds at most a window per stream.  The connection's window
   (L{CONNECTION_WINDOW}) is far larger than any stream's, so that paused
   streams do not hold up the others;
 - request bodies: DATA goes out within the upstream's windows, what does
   not fit waits, and the client's body is paused while more than
   L{HIGH_WATER} waits or while the connection's transport is full.

A GOAWAY lets the streams it covers finish (RFC 9113 §6.8; h2 would end
the connection there, see L{keda_proxy.wire._h2state}), fails the others as
never answered, and the pool gives the connection no new stream; a stream
the upstream refuses (C{REFUSED_STREAM}) fails the same way, so a request
that may be replayed is sent again on another connection.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from h2.config import H2Configuration
from h2.connection import (
    H2Connection,
)
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.interfaces import IUpstreamExchange
from keda_proxy.upstream._h2fields import (
    NO_BODY_CODES,
    request_fields,
    request_trailers,
    response_head,
    trailer_fields,
)
from keda_proxy.upstream._http1client import (
    CLOSED,
    IDLE,
    MAX_HEAD,
    MAX_INFORMATIONAL,
    UpstreamProtocolError,
)
from keda_proxy.wire._h2state import graceful, release
from keda_proxy.wire._producers import steer

#: The window of each stream's response: enough for an 8 MiB gRPC message
#: to stream at full speed, and what the proxy holds at most of a stream
#: whose client does not read.
STREAM_WINDOW = 1 << 20
#: The connection's window for responses, as Go's transport sets it: far
#: above any stream's, so that streams paused by slow clients (each
#: holding its own window, at most) leave room for the others.
CONNECTION_WINDOW = 1 << 30
#: Largest response header list accepted (Go's default too).
MAX_HEADER_LIST = MAX_HEAD
#: Request body bytes waiting for the upstream's window (or for the
#: transport) above which the client's body is paused.
HIGH_WATER = 64 * 1024
#: Streams a new connection takes before the upstream's SETTINGS say how
#: many it allows (Go assumes as many).
ASSUMED_MAX_STREAMS = 100
#: Streams taken at most, whatever the upstream allows (Go's bound).
MAX_STREAMS = 1000

class UpstreamReset(UpstreamProtocolError):
    """The upstream reset the stream (RST_STREAM) before its response was
    complete."""

    def __init__(self, code):
        self.code = code
        super().__init__(f"the upstream reset the stream ({_code_name(code)})")


def _code_name(code) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(int(code))


@implementer(IUpstreamExchange, IPushProducer)
class H2Stream:
    """One exchange on an L{H2ClientConnection}: a stream, once sent.

    The pool hands it out (L{H2ClientConnection.new_stream}) before it is
    sent; given back unused (its C{owner}'s C{connection_reusable}), it
    frees its place.  It is its own C{transport}: the producer of the
    response body (pausing it stops acknowledging what arrives on the
    stream), and the consumer the request body registers with.
    """

    stream_id: Optional[int] = None
    sink = None
    #: whether any of the response arrived (a 1xx included)
    answered = False
    #: whether the response head arrived
    _started = False
    #: the response is complete, or abandoned: nothing more goes to a sink
    _done = False
    #: HEADERS sent (or waiting for a place on the connection)
    _sent = False
    #: END_STREAM sent, or the stream reset: nothing more goes out
    _ended = False
    #: the request body's end was given (L{end_body}), with its trailers
    _end_requested = False
    _trailers_out = None
    _informational = 0
    #: the response's trailers
    _trailers = None
    _paused = False
    #: flow-controlled bytes received and not acknowledged (while paused)
    _unacked = 0
    _producer = None
    _producer_paused = False
    _timer = None
    _timer_fn = None
    _head_only = False
    _over = False

    def __init__(self, connection: "H2ClientConnection"):
        self.connection = connection
        self.owner = connection.owner
        #: the connection's count of streams sent, this one included
        self.uses = 0
        self.more_expected = True
        self._fields = None
        self._unsent = deque()
        self._unsent_size = 0

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} uses={self.uses}>"

    # -- what the pool and the warmer look at --------------------------------

    @property
    def transport(self):
        """Itself, until it is over (see the class docstring)."""
        return None if self._over else self

    @property
    def usable(self) -> bool:
        return not self._sent and not self._over and self.connection.usable

    @property
    def idle_since(self) -> float:
        return self.connection.idle_since

    @property
    def state(self) -> int:
        """C{CLOSED} once its connection is, as the HTTP/1.1 connection's
        state (for L{keda_proxy.upstream._prewarm.PodWarmer})."""
        return CLOSED if self.connection.closed else IDLE

    def release(self) -> None:
        """Given back unsent: its place on the connection is free again."""
        if not self._sent:
            self._finish()
        else:
            self.abort()

    # -- IUpstreamExchange: sending --------------------------------------------

    def send(self, method: bytes, head: bytes, sink, chunked_body: bool = False,
             has_body: bool = False, upgrade: Optional[bytes] = None) -> None:
        """Send the request's HEADERS, translated from its HTTP/1.1 head
        (L{keda_proxy.upstream._h2fields.request_fields}); without a body,
        END_STREAM goes with them.
        C{upgrade} is never asked of an HTTP/2 connection (the proxy sends
        those requests over HTTP/1.1)."""
        assert not self._sent, "a stream carries one request"
        conn = self.connection
        self._sent = True
        self.sink = sink
        self._head_only = method == b"HEAD"
        conn.uses += 1
        self.uses = conn.uses
        if self._over:
            return
        self._fields = request_fields(head, conn.scheme, conn.authority)
        if not has_body:
            self._end_requested = True
        conn._open_stream(self)

    def write_body(self, data: bytes) -> None:
        if self._done or self._ended or self._end_requested or not data:
            return
        self._unsent.append(data)
        self._unsent_size += len(data)
        if self.stream_id is not None:
            self._send_unsent()
            self.connection._flush()
        self._check_producer()

    def end_body(self, trailers=None) -> None:
        """The request body is complete: END_STREAM, or its trailers as a
        last HEADERS, once what is buffered went out."""
        if self._done or self._ended or self._end_requested:
            return
        self._end_requested = True
        self._trailers_out = request_trailers(trailers) if trailers else None
        if self.stream_id is not None:
            self._send_unsent()
            self.connection._flush()

    def _send_unsent(self) -> None:
        """Send what the windows let through; end the stream when nothing
        is left and the body's end was given."""
        h2 = self.connection.h2
        sid = self.stream_id
        pending = self._unsent
        try:
            while pending:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                n = min(window, h2.max_outbound_frame_size)
                chunk = pending[0]
                if len(chunk) <= n:
                    pending.popleft()
                else:  # a frame's worth, without copying the rest each time
                    view = memoryview(chunk)
                    pending[0] = view[n:]
                    chunk = view[:n]
                self._unsent_size -= len(chunk)
                h2.send_data(sid, chunk)
            if not pending and self._end_requested and not self._ended:
                self._ended = True
                if self._trailers_out:
                    h2.send_headers(sid, self._trailers_out, end_stream=True)
                else:
                    h2.end_stream(sid)
        except H2Error:
            # the stream closed under us (reset): its end reports it
            self._ended = True
            pending.clear()
            self._unsent_size = 0

    # -- the request body's producer -------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False
        self._check_producer()

    def unregisterProducer(self) -> None:
        self._producer = None

    def _check_producer(self) -> None:
        """Pause the request body while too much of it waits, or while the
        connection cannot write; resume it when that is over."""
        producer = self._producer
        if producer is None:
            return
        self._producer_paused = steer(
            producer, self._producer_paused,
            self._unsent_size > HIGH_WATER or self.connection.write_paused)

    # -- IPushProducer: the response body ---------------------------------------

    def pauseProducing(self) -> None:
        """The client is slow: what arrives is passed on but not
        acknowledged, so the upstream's window for the stream closes."""
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            conn = self.connection
            conn._acknowledge(unacked, self.stream_id)
            conn._flush()

    def stopProducing(self) -> None:
        self.abort()

    # -- timers ------------------------------------------------------------------

    def arm_timer(self, delay: float, fn) -> None:
        if self._done:
            return
        self.disarm_timer()
        self._timer_fn = fn
        self._timer = self.connection.clock.callLater(delay, self._timer_fired)

    def disarm_timer(self) -> None:
        self._timer_fn = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timer_fired(self) -> None:
        self._timer = None
        fn, self._timer_fn = self._timer_fn, None
        if fn is not None:
            fn()

    # -- endings -------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the exchange, telling nobody (the client went away): the
        upstream gets RST_STREAM(CANCEL)."""
        self.sink = None
        self._done = True
        self._reset(ErrorCodes.CANCEL)
        self._finish()

    def abort_with(self, error: Exception) -> None:
        """Reset the stream and fail the exchange with C{error} (a
        timeout)."""
        sink, started = self.sink, self._started
        self.abort()
        if sink is not None:
            sink.response_failed(Failure(error), started)

    def _reset(self, code) -> None:
        """RST_STREAM, if the stream is open and not reset yet."""
        if self.stream_id is not None and not self._ended_both():
            self._ended = True
            conn = self.connection
            try:
                conn.h2.reset_stream(self.stream_id, code)
            except H2Error:
                pass  # closed meanwhile
            conn._flush()
        self._ended = True

    def _ended_both(self) -> bool:
        """Whether h2 sees the stream closed already (both ways, or reset)."""
        h2stream = self.connection.h2.streams.get(self.stream_id)
        return h2stream is None or h2stream.closed

    def _fail_stream(self, reason: Failure) -> None:
        """The exchange broke: the sink hears it, once."""
        sink, self.sink = self.sink, None
        self._done = True
        self._finish()
        if sink is not None:
            sink.response_failed(reason, self._started)

    def _finish(self) -> None:
        """Over: its place on the connection is free, its timer gone, any
        withheld window handed back."""
        if self._over:
            return
        self._over = True
        self._done = True
        self.disarm_timer()
        self._producer = None
        self._unsent.clear()
        self._unsent_size = 0
        self.connection._stream_over(self)

    # -- receiving (called by the connection) -------------------------------------

    def _informational_head(self, headers) -> None:
        self.answered = True
        self._informational += 1
        if self._informational > MAX_INFORMATIONAL:
            self._protocol_error(UpstreamProtocolError("too many 1xx responses"))
            return
        try:
            head = response_head(headers)
        except UpstreamProtocolError as e:
            self._protocol_error(e)
            return
        if head.code != 100 and self.sink is not None:
            self.sink.response_informational(head)

    def _head_received(self, headers, ended: bool) -> None:
        self.answered = True
        try:
            head = response_head(headers, self._head_only, ended)
            if ended and head.length and not self._head_only and head.code not in NO_BODY_CODES:
                # h2 checks the length of DATA only: none came at all
                raise UpstreamProtocolError("the response ended before its Content-Length")
        except UpstreamProtocolError as e:
            self._protocol_error(e)
            return
        self._started = True
        if ended:
            self.more_expected = False
        if self.sink is not None:
            self.sink.response_head(head)

    def _data_received(self, data: bytes, flow: int, ended: bool) -> None:
        if ended:
            self.more_expected = False
        sink = self.sink
        if sink is not None and data:
            sink.response_data(data)
        if flow:
            if self._paused and not self._done:
                self._unacked += flow
            else:
                self.connection._acknowledge(flow, self.stream_id)

    def _trailers_received(self, headers) -> None:
        try:
            self._trailers = trailer_fields(headers)
        except UpstreamProtocolError as e:
            self._protocol_error(e)

    def _stream_ended(self) -> None:
        """The response is complete.  A request body still being sent is
        cut (RST_STREAM CANCEL): nobody reads it any more."""
        self._reset(ErrorCodes.CANCEL)  # only if h2 sees it open still
        sink, self.sink = self.sink, None
        self._done = True
        self.more_expected = False
        trailers, self._trailers = self._trailers, None
        self._finish()
        if sink is not None:
            sink.response_done(trailers)

    def _stream_reset(self, code) -> None:
        """The upstream reset the stream: refused (never processed, so it
        may be replayed, as after a GOAWAY), or broken."""
        self._ended = True
        if code == ErrorCodes.REFUSED_STREAM and not self._started:
            self._refused("the upstream refused the stream")
        else:
            self._fail_stream(Failure(UpstreamReset(code)))

    def _refused(self, why: str) -> None:
        """Never processed by the upstream: a not-started failure the
        proxy may replay on another connection."""
        self.answered = False
        self._fail_stream(Failure(ConnectionDone(why)))

    def _protocol_error(self, error: Exception) -> None:
        """A response the proxy will not pass on: the stream is reset."""
        self._reset(ErrorCodes.PROTOCOL_ERROR)
        self._fail_stream(Failure(error))


@implementer(IPushProducer)
class H2ClientConnection(Protocol):
    """One HTTP/2 connection to an upstream, carrying L{H2Stream}s.

    @ivar scheme: C{:scheme} of its requests: C{b"http"} (h2c) or
        C{b"https"}.
    @ivar authority: C{:authority} for a request without a Host.
    @ivar owner: the pool's side (see L{keda_proxy.upstream._pool}): told
        when the connection is gone (C{connection_lost}), and when it has
        no stream left (C{connection_idle}).
    """

    owner = None
    #: called with this connection once connected (see
    #: L{keda_proxy.upstream._dial.DirectEndpoint}), then forgotten
    connected_callback = None

    def __init__(self, clock, scheme: bytes = b"http", authority: bytes = b""):
        self.clock = clock
        self.scheme = scheme
        self.authority = authority
        config = H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2 = H2Connection(config)
        graceful(h2)
        h2.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: ASSUMED_MAX_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        h2.decoder.max_header_list_size = MAX_HEADER_LIST
        #: streams sent, by id, until over
        self.streams: dict = {}
        #: streams sent while the connection had no room, oldest first
        self.waiting: deque = deque()
        #: streams handed out and not over (sent, waiting, or not sent yet)
        self.allocated = 0
        #: streams sent so far
        self.uses = 0
        #: streams the upstream takes at once
        self.max_streams = ASSUMED_MAX_STREAMS
        self._settings_seen = False
        #: a GOAWAY came (or the stream ids ran out): no new stream
        self.goaway = False
        #: close once the last stream is over
        self.closing = False
        self.closed = False
        self.write_paused = False
        self.idle_since = clock.seconds()

    def __repr__(self) -> str:
        return (f"<H2ClientConnection {self.authority.decode('ascii', 'replace')} "
                f"streams={len(self.streams)} allocated={self.allocated}>")

    # -- what the pool looks at ---------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether new streams may go to it."""
        return not (self.goaway or self.closing or self.closed) and \
            self.transport is not None and not getattr(self.transport, "disconnecting", False)

    @property
    def idle(self) -> bool:
        """No stream at all: the idle timeout runs."""
        return self.allocated == 0 and self.usable

    def room(self) -> int:
        """How many more streams it takes now."""
        if not self.usable:
            return 0
        return max(0, self.max_streams - self.allocated)

    def new_stream(self) -> H2Stream:
        """A stream for one request, counted against the room until it is
        over (or given back)."""
        self.allocated += 1
        return H2Stream(self)

    def close(self) -> None:
        """Close: at once when no stream is left (with a GOAWAY), else
        once the last one is over."""
        self.closing = True
        if self.allocated == 0 and not self.closed and self.transport is not None:
            self.closed = True
            try:
                self.h2.close_connection()
            except H2Error:
                pass
            self._flush()
            self.transport.loseConnection()

    # -- lifecycle ------------------------------------------------------------------

    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        h2 = self.h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - h2.inbound_flow_control_window)
        self._flush()
        self.transport.registerProducer(self, True)
        self.idle_since = self.clock.seconds()
        callback = self.connected_callback
        if callback is not None:
            self.connected_callback = None
            callback(self)

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        release(self.h2)
        reason = reason or Failure(ConnectionDone())
        for stream in list(self.streams.values()) + list(self.waiting):
            stream._fail_stream(reason)
        self.streams.clear()
        self.waiting.clear()
        owner = self.owner
        if owner is not None:
            owner.connection_lost(self)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _acknowledge(self, size: int, stream_id: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            pass  # the connection is closing

    # -- IPushProducer: the transport is full, or has room again --------------------

    def pauseProducing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            stream._check_producer()

    def resumeProducing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream._check_producer()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    # -- streams ---------------------------------------------------------------------

    def _open_stream(self, stream: H2Stream) -> None:
        """Send a stream's HEADERS now if the upstream takes another
        stream, else when one is over."""
        if self.goaway or self.closed:
            stream._refused("the connection was closing")
            return
        if len(self.streams) >= self.max_streams:
            self.waiting.append(stream)
            return
        h2 = self.h2
        end = stream._end_requested and not stream._unsent and not stream._trailers_out
        try:
            sid = h2.get_next_available_stream_id()
            h2.send_headers(sid, stream._fields, end_stream=end)
        except TooManyStreamsError:
            # h2 counts a stream open that this connection let go of (one
            # the upstream has not closed yet): wait for the next to end
            self.waiting.appendleft(stream)
            return
        except H2Error as e:
            self._flush()
            if h2.highest_outbound_stream_id >= (1 << 31) - 2:
                self.goaway = True  # no stream id left: a fresh connection takes it
                if self.owner is not None:
                    self.owner.connection_lost(self)
                stream._refused("no stream id left on the connection")
            else:
                stream._fail_stream(Failure(UpstreamProtocolError(f"cannot send the request: {e}")))
            return
        stream._fields = None
        stream.stream_id = sid
        if end:
            stream._ended = True
        self.streams[sid] = stream
        if stream._unsent or stream._end_requested:
            stream._send_unsent()
        self._flush()

    def _stream_over(self, stream: H2Stream) -> None:
        """A stream is over: it leaves the connection, and a waiting one
        may take its place."""
        self.allocated -= 1
        sid = stream.stream_id
        if sid is not None:
            self.streams.pop(sid, None)
            if stream._unacked:  # the connection's window, withheld for it
                unacked, stream._unacked = stream._unacked, 0
                self._acknowledge(unacked, sid)
                self._flush()
        elif stream in self.waiting:
            self.waiting.remove(stream)
        while self.waiting and len(self.streams) < self.max_streams and not self.closed:
            self._open_stream(self.waiting.popleft())
        if self.allocated == 0:
            self.idle_since = self.clock.seconds()
            if self.goaway or self.closing:
                self.close()
            elif self.owner is not None and not self.closed:
                self.owner.connection_idle(self)

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self._protocol_error(UpstreamProtocolError(f"HTTP/2 protocol error: {e}"))
            return
        streams = self.streams
        for event in events:
            kind = event.__class__
            if kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:  # reset by us: hand its window back
                    self._acknowledge(event.flow_controlled_length, event.stream_id)
                else:
                    stream._data_received(event.data, event.flow_controlled_length,
                                          event.stream_ended is not None)
            elif kind is ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._head_received(event.headers, event.stream_ended is not None)
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._stream_ended()
            elif kind is TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._trailers_received(event.headers)
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._stream_reset(event.error_code)
            elif kind is InformationalResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._informational_head(event.headers)
            elif kind is RemoteSettingsChanged:
                self._settings_changed(event.changed_settings)
            elif kind is ConnectionTerminated:
                self._goaway(event.last_stream_id)
            if self.closed:
                return
        self._flush()

    def _window_opened(self, stream_id: int) -> None:
        """The upstream opened a window: the stream's (or, stream 0, every
        stream's) waiting body goes on."""
        if stream_id:
            stream = self.streams.get(stream_id)
            targets = () if stream is None else (stream,)
        else:
            targets = list(self.streams.values())
        for stream in targets:
            if stream._unsent or (stream._end_requested and not stream._ended):
                stream._send_unsent()
                stream._check_producer()

    def _settings_changed(self, changed) -> None:
        remote = self.h2.remote_settings
        if not self._settings_seen or SettingCodes.MAX_CONCURRENT_STREAMS in changed:
            self._settings_seen = True
            self.max_streams = min(remote.max_concurrent_streams, MAX_STREAMS)
            while self.waiting and len(self.streams) < self.max_streams:
                self._open_stream(self.waiting.popleft())
        if SettingCodes.INITIAL_WINDOW_SIZE in changed:
            self._window_opened(0)

    def _goaway(self, last_stream_id: int) -> None:
        """No new stream: those above C{last_stream_id} were never
        processed, and fail so that they may be replayed elsewhere; those
        below finish, and then the connection closes."""
        self.goaway = True
        if self.owner is not None:
            self.owner.connection_lost(self)  # no new stream goes to it
        refused = [s for sid, s in self.streams.items() if sid > last_stream_id]
        refused += self.waiting
        self.waiting.clear()
        for stream in refused:
            stream._ended = True
            stream._refused("the upstream went away (GOAWAY) before the stream")
        if self.allocated == 0:
            self.close()

    def _protocol_error(self, error: Exception) -> None:
        """h2 refused what the upstream sent: GOAWAY (h2 has it ready),
        every stream fails, and the connection closes."""
        self.goaway = True
        self._flush()
        streams = list(self.streams.values()) + list(self.waiting)
        self.streams.clear()
        self.waiting.clear()
        self.closed = True
        for stream in streams:
            stream._fail_stream(Failure(error))
        if self.owner is not None:
            self.owner.connection_lost(self)
        if self.transport is not None:
            self.transport.loseConnection()
