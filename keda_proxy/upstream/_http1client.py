"""
A lean HTTP/1.1 client connection for the forwarding path.

Why not C{twisted.web.client.Agent}: the proxy already has the request
head as bytes, wants the response head as raw pairs, streams both bodies
with backpressure, must tunnel a ``101 Switching Protocols`` (WebSockets),
and runs on every request, where Agent's generality costs about half the
throughput.  One L{UpstreamConnection} carries one exchange at a time; the
pool (L{keda_proxy.upstream._pool}) reuses it when the response allows.

The other side of a connection is an L{IResponseSink}, implemented by the
proxy's per-request exchange.

Trailers, as Go's ReverseProxy passes them, whatever the client's ``TE``:
a chunked response's trailer fields reach the sink's C{response_done} as
C{(name, value)} pairs (L{trailer_fields}), and its ``Trailer`` header is
announced again, in the head, for them (L{parse_head}).  A client gets
them only where its response is chunked too (an HTTP/1.1 client): a
counted body, or one that ends with the connection, has no room for them.
The request's own trailers go the other way, after a chunked request body
(L{UpstreamConnection.end_body}).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.interfaces import IConnectionOwner, IResponseSink, IUpstreamExchange
from keda_proxy.wire._framing import ChunkedDecoder, ChunkedError, content_length
from keda_proxy.wire._headers import (
    _HOP_KEYS,
    CANONICAL_NAMES,
    BadTrailer,
    InvalidHeaderName,
    canonical_name,
    sendable_trailers,
    trailer_names,
)
from keda_proxy.wire._headers import trailer_fields as _trailer_fields
from keda_proxy.wire._memo import remember
from keda_proxy.wire._outbox import Writer

#: Largest response head accepted from an upstream (Go's default is 1 MiB).
MAX_HEAD = 1 << 20
#: Informational (1xx) responses accepted before the final one, as in Go.
MAX_INFORMATIONAL = 5

# Connection states.
IDLE, SENT, HEAD, BODY, DONE, TUNNEL, CLOSED = range(7)


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


class ResponseHead(NamedTuple):
    """An upstream response head, parsed and filtered in one pass."""

    code: int
    phrase: bytes
    version: bytes
    #: the end-to-end header lines, ready to send on: canonical names,
    #: each line ending in CRLF, hop-by-hop headers (and those that
    #: ``Connection`` names) left out, but for a chunked body's
    #: ``Trailer``, announced again; Content-Length only for a body that
    #: is not chunked
    block: bytes
    #: the body's length from Content-Length, or None
    length: Optional[int]
    chunked: bool
    #: the upstream will close after this response
    close: bool
    #: whether the block carries a Date (which then replaces ours)
    has_date: bool
    #: the header lines exactly as sent (a 101 passes them all on)
    lines: tuple


def parse_head(head: bytes) -> ResponseHead:
    """Parse ``HTTP/1.x CODE PHRASE`` plus header lines (without the final
    blank line).  Bare CR or LF, NUL, folded lines, names that are not
    tokens and conflicting or malformed Content-Lengths are refused with
    L{UpstreamProtocolError}: what passes goes to the client as it is.

    Parsing, framing and the hop-by-hop filter (L{headers.HOP_BY_HOP})
    share one loop over the lines, which yields the bytes to send on: the
    response's headers are never stored and serialised again.

    ``Trailer`` is hop-by-hop, but a chunked response announces its
    trailers again, in one ``Trailer`` line of the names that may be
    trailers (L{keda_proxy.wire._headers.trailer_names}), as Go's
    ReverseProxy does; the announcement of a body that is not chunked is
    dropped, as it has no trailers to announce.

    A head seen before, byte for byte, gets the same (immutable) answer
    from L{_HEADS} without any of that.
    """
    parsed = _HEADS.get(head)
    if parsed is not None:
        return parsed
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or 0 in head:  # NUL
        raise UpstreamProtocolError("bare CR, LF or NUL in the response head")
    status = lines[0]
    parsed_status = _STATUS_LINES.get(status)
    if parsed_status is None:
        if status[:7] != b"HTTP/1." or status[8:9] != b" " or not status[9:12].isdigit() \
                or status[12:13] not in (b"", b" "):
            raise UpstreamProtocolError(f"bad status line {status[:80]!r}")
        parsed_status = (int(status[9:12]), status[13:], status[:8])
        if len(status) <= _LINE_KEPT_MAX:
            remember(_STATUS_LINES, status, parsed_status)
    code, phrase, version = parsed_status
    parts = []
    known = CANONICAL_NAMES
    cache = _LINES
    length_value = named = codings = announced = None
    close = has_date = conflict = False
    del lines[0]
    for line in lines:
        hit = cache.get(line)
        if hit is None:
            name, colon, value = line.partition(b":")
            key = known.get(name)
            if key is None or not colon:
                if not name or not colon or name[0] in _SPACE or name[-1] in _SPACE:
                    if not line:
                        continue
                    raise UpstreamProtocolError(f"bad or folded header line {line[:80]!r}")
                try:
                    key = canonical_name(name)
                except InvalidHeaderName:
                    raise UpstreamProtocolError(f"bad header name {name[:80]!r}") from None
            value = value.strip(b" \t")
            keep = len(line) <= _LINE_KEPT_MAX
            if key not in _SPECIAL_KEYS:
                parts.append(b"%s: %s\r\n" % (key, value))
                if keep:
                    remember(cache, line, parts[-1])
                continue
            if keep and key != b"Date":  # Date: a new value every second
                remember(cache, line, (key, value))
        elif hit.__class__ is bytes:  # an end-to-end line, as sent on
            parts.append(hit)
            continue
        else:
            key, value = hit
        # framing, Date and the hop-by-hop headers
        if key == b"Content-Length":
            if length_value is None:
                length_value = value
            elif value != length_value:
                conflict = True
        elif key == b"Date":
            has_date = True
            parts.append(b"Date: %s\r\n" % value)
        elif key == b"Transfer-Encoding":
            codings = value if codings is None else codings + b"," + value
        elif key == b"Trailer":
            announced = value if announced is None else announced + b"," + value
        elif key == b"Connection":
            value = value.lower()
            if value == b"keep-alive":
                continue
            if value == b"close":
                close = True
                continue
            for token in value.split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token and token != b"keep-alive":
                    named = named or set()
                    named.add(token)
    chunked = False
    if codings is not None and version != b"HTTP/1.0":  # HTTP/1.0 has none (Go ignores it)
        chunked = _is_chunked(codings)
    if named:  # headers the Connection header made hop-by-hop
        parts = [p for p in parts if p[:p.index(b":")].lower() not in named]
        has_date = has_date and b"date" not in named
    if announced is not None and chunked:
        names = trailer_names(announced)
        if names:
            parts.append(b"Trailer: %s\r\n" % names)
    length = None
    if length_value is not None and not chunked:  # framing is ours, whatever Connection says
        if conflict:
            raise UpstreamProtocolError("conflicting Content-Length")
        value = length_value
        length = content_length(value)
        if length is None:
            raise UpstreamProtocolError("bad Content-Length")
        parts.append(b"Content-Length: %s\r\n" % value)
    # tuple.__new__ directly: the named tuple's constructor is a Python frame
    parsed = _new_tuple(ResponseHead, (code, phrase, version, b"".join(parts),
                                       length, chunked, close or version == b"HTTP/1.0",
                                       has_date, tuple(lines)))
    if len(head) <= _HEAD_KEPT_MAX:
        remember(_HEADS, head, parsed, _HEADS_LIMIT)
    return parsed


def _is_chunked(codings: bytes) -> bool:
    """Whether a Transfer-Encoding list (every line, joined by commas) frames
    the body as chunked.  As in Go, ``chunked`` alone is the only coding
    taken: with another coding before it the body would reach the client
    still encoded, and without it as the final one (``xchunked``,
    ``chunked, gzip``) the length is unknowable, so both are refused."""
    tokens = [t.strip().lower() for t in codings.split(b",")]
    if tokens == [b"chunked"]:
        return True
    raise UpstreamProtocolError(f"unsupported Transfer-Encoding {codings[:80]!r}")


#: fields that never pass as trailers (RFC 9110 §6.5.1), in canonical
#: form: the framing and routing ones, the hop-by-hop ones, those that say
#: how to read the content, and authentication.  A recipient must not merge
#: a trailer into the head, but one that does should not meet these.
def trailer_fields(lines) -> Optional[list]:
    """L{keda_proxy.wire._headers.trailer_fields}, a bad line refusing the
    response (L{UpstreamProtocolError}): the client then sees it cut."""
    try:
        return _trailer_fields(lines)
    except BadTrailer as e:
        raise UpstreamProtocolError(str(e)) from None


def _request_trailers(fields) -> bytes:
    """Request trailer fields, as lines to send after the last chunk
    (L{sendable_trailers})."""
    return b"".join(b"%s: %s\r\n" % field for field in sendable_trailers(fields))


#: the end of a response head, bare LFs allowed (as Go's reader allows
#: them; a bare CR, NUL and the rest are still refused by parse_head)
_LENIENT_END = re.compile(rb"\r?\n\r?\n")


def _crlf_lines(head: bytes) -> bytes:
    """A head whose lines end in bare LFs, with CRLF line ends (for
    L{parse_head}, which still refuses any CR left inside a line)."""
    return b"\r\n".join(line[:-1] if line[-1:] == b"\r" else line
                        for line in head.split(b"\n"))


_SPACE = (32, 9)  # space and tab, as ints (indexing bytes)
#: whole response head -> its L{ResponseHead}.  A backend answering the
#: same request (a burst released after a cold start, a health check,
#: static content) sends the same head, byte for byte, until its Date
#: changes a second later: one lookup then replaces the whole parse.
#: Heads with per-response lines (request ids, cookies) miss and are kept
#: until the table is emptied, when full.
_HEADS: dict = {}
_HEAD_KEPT_MAX = 512
_HEADS_LIMIT = 1024
#: raw header line -> the line as sent on (end-to-end headers), or its
#: C{(canonical name, value)} (the framing and hop-by-hop ones).  Most
#: lines repeat from one response to the next (Server, Content-Type,
#: Content-Length, Connection...): a line seen before skips the split, the
#: name lookup and the checks, which gave it the same answer then.  Lines
#: with per-response values fill it up; it is simply emptied when full.
_LINES: dict = {}
#: status line -> C{(code, phrase, version)}, likewise
_STATUS_LINES: dict = {}
#: longer lines (cookies, tokens) are rarely repeated, and would make the
#: table large
_LINE_KEPT_MAX = 200
_new_tuple = tuple.__new__
#: canonical names the loop above looks at: framing, Date, hop-by-hop
_SPECIAL_KEYS = _HOP_KEYS | {b"Content-Length", b"Date"}


@implementer(IUpstreamExchange)
class UpstreamConnection(Protocol):
    """One keep-alive connection to an upstream."""

    owner: Optional[IConnectionOwner] = None
    #: called with this connection once connected (see
    #: L{keda_proxy.upstream._dial.DirectEndpoint}), then forgotten
    connected_callback = None

    def __init__(self, clock):
        self.clock = clock
        self.state = IDLE
        self.sink: Optional[IResponseSink] = None
        self.uses = 0
        self.idle_since = 0.0
        self._buffer = b""
        self._decoder = None
        self._remaining: Optional[int] = None
        #: whether the response body continues past the bytes being
        #: delivered now (False only for the last piece of a counted body)
        self.more_expected = True
        self._request_complete = True
        self._head_only = False
        self._keep_alive = True
        self._response_started = False
        self._chunked_body = False
        self._upgrade_to: Optional[bytes] = None
        self._informational = 0
        #: whether any byte of the current response has arrived (a request
        #: the upstream began to answer is never sent again)
        self.answered = False
        self.tunnel = None

    # -- lifecycle ----------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Until connected; then the connection's L{Writer} takes over."""
        self.transport.write(data)

    def connectionMade(self):
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        self._writer = Writer(self.transport, self.clock)
        self._send = self._writer.write
        self.idle_since = self.clock.seconds()
        callback = self.connected_callback
        if callback is not None:
            self.connected_callback = None
            callback(self)

    def connectionLost(self, reason=None):
        state, self.state = self.state, CLOSED
        self._timer_fn = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        reason = reason or Failure(ConnectionDone())
        if state == TUNNEL and self.tunnel is not None:
            self.tunnel.upstream_lost(reason)
        elif state == BODY and self._decoder is None and self._remaining is None:
            # a body delimited by the end of the connection is complete
            self._finish(reusable=False)
        elif state in (SENT, HEAD, BODY):
            sink, self.sink = self.sink, None
            if sink is not None:
                sink.response_failed(reason, self._response_started)
        if self.owner is not None:
            self.owner.connection_lost(self)

    # -- one lazy timer per connection -------------------------------------
    # The response-header timeout is armed for every request.  The timer is
    # left running when a later deadline is armed, and looks at the current
    # deadline when it fires: no timer operation per request at all while
    # responses come in time.  A disarmed timer that fires finds nothing.

    _timer = None
    _timer_fn = None
    _timer_due = 0.0  # when the running DelayedCall fires
    _deadline = 0.0  # when the armed timeout is due

    def arm_timer(self, delay: float, fn) -> None:
        self._timer_fn = fn
        deadline = self._deadline = self.clock.seconds() + delay
        timer = self._timer
        if timer is None:
            self._timer = self.clock.callLater(delay, self._timer_fired)
            self._timer_due = deadline
        elif self._timer_due > deadline:  # a shorter timeout than the last
            timer.reset(delay)
            self._timer_due = deadline

    def disarm_timer(self) -> None:
        self._timer_fn = None

    def _timer_fired(self) -> None:
        self._timer = None
        if self._timer_fn is None:
            return
        remaining = self._deadline - self.clock.seconds()
        if remaining > 0:  # re-armed since this DelayedCall was set
            self._timer = self.clock.callLater(remaining, self._timer_fired)
            self._timer_due = self._deadline
            return
        fn, self._timer_fn = self._timer_fn, None
        fn()

    @property
    def usable(self) -> bool:
        return self.state == IDLE and self.transport is not None and \
            not getattr(self.transport, "disconnecting", False)

    # -- sending --------------------------------------------------------------

    def send(self, method: bytes, head: bytes, sink: IResponseSink,
             chunked_body: bool = False, has_body: bool = False,
             upgrade: Optional[bytes] = None) -> None:
        """Write a request head; the body, if any, follows through
        L{write_body} and L{end_body}.  C{upgrade} is the protocol the
        request asks to switch to, if any: a 101 for anything else is
        refused."""
        assert self.state == IDLE, self.state
        self.state = SENT
        self.sink = sink
        self.uses += 1
        self._head_only = method == b"HEAD"
        self._keep_alive = True
        self._response_started = False
        self._upgrade_to = upgrade
        self._informational = 0
        self.answered = False
        self._chunked_body = chunked_body
        self._request_complete = not has_body
        self._send(head)

    def write_body(self, data: bytes) -> None:
        if self.state in (CLOSED, DONE) or not data:
            return
        if self._chunked_body:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._send(data)

    def end_body(self, trailers=None) -> None:
        """The request body is complete; a chunked one ends with its
        trailer fields, if any (a counted body has no room for them),
        those that may be trailers only (L{_request_trailers})."""
        self._request_complete = True
        if self._chunked_body and self.state not in (CLOSED, DONE):
            fields = _request_trailers(trailers) if trailers else b""
            self._send(b"0\r\n%s\r\n" % fields)

    def abort(self) -> None:
        """Drop the connection now, telling nobody (the client went away)."""
        self.sink = None
        if self.transport is not None and self.state != CLOSED:
            self.transport.abortConnection()

    def abort_with(self, error: Exception) -> None:
        """Drop the connection and fail the exchange with C{error} (a
        timeout), before the transport reports anything else."""
        sink, self.sink = self.sink, None
        started = self._response_started
        if self.transport is not None and self.state != CLOSED:
            self.state = CLOSED
            self.transport.abortConnection()
        if sink is not None:
            sink.response_failed(Failure(error), started)

    # -- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == SENT and not self._buffer:
            # The usual response: the whole of it in one read, with a head
            # seen before (so valid).  What the loop below would do with it.
            end = data.find(b"\r\n\r\n")
            parsed = _HEADS.get(data[:end]) if end > 0 else None
            if parsed is not None and parsed.code >= 200 and parsed.length \
                    and len(data) - end - 4 == parsed.length and not self._head_only \
                    and parsed.code != 204 and parsed.code != 304:  # not L{_bodiless}
                self.state = HEAD
                self.answered = True
                self._buffer = data[end + 4:]
                self._whole(parsed)
                return
        if self.state == BODY:
            if self._remaining is not None:
                self._counted(data)
            elif self._decoder is not None:
                try:
                    self._decoder.dataReceived(data)
                except ChunkedError as e:
                    self._protocol_error(UpstreamProtocolError(f"bad chunked body: {e}"))
            else:
                self._deliver(data)
            return
        if self.state == TUNNEL:
            self.tunnel.upstream_data(data)
            return
        if self.state not in (SENT, HEAD):
            # unsolicited bytes on an idle connection: it cannot be trusted
            self.transport.abortConnection()
            return
        self.state = HEAD
        self.answered = True
        self._buffer += data
        while self.state == HEAD:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            parsed = None
            if end >= 0:
                try:
                    # parse_head refuses any bare LF, so a head it takes has
                    # no bare-LF end inside it that should have ended it sooner
                    parsed = parse_head(buffer[:end])
                    self._buffer = buffer[end + 4:]
                except UpstreamProtocolError:
                    pass
            if parsed is None:  # no CRLF end, or lines that end in bare LFs
                match = _LENIENT_END.search(buffer)
                if match is None:
                    if len(buffer) > MAX_HEAD:
                        self._protocol_error(UpstreamProtocolError("response head too large"))
                    return
                self._buffer = buffer[match.end():]
                try:
                    parsed = parse_head(_crlf_lines(buffer[:match.start()]))
                except UpstreamProtocolError as e:
                    self._protocol_error(e)
                    return
            code = parsed.code
            if code == 101:
                self._upgrade(parsed)
                return
            if 100 <= code < 200:  # 100 Continue, 103 Early Hints: the real one follows
                self._informational += 1
                if self._informational > MAX_INFORMATIONAL:
                    self._protocol_error(UpstreamProtocolError("too many 1xx responses"))
                    return
                if code != 100:
                    self.sink.response_informational(parsed)
                    if self.sink is None:  # the sink gave up
                        return
                continue
            if parsed.length and len(self._buffer) == parsed.length \
                    and not self._bodiless(code):
                self._whole(parsed)  # the usual response: all of it in this read
                return
            self._start_body(parsed)
        if self.state == BODY and self._buffer:
            rest, self._buffer = self._buffer, b""
            if self._remaining is not None:
                self._counted(rest)  # the common case: a small counted body
            else:
                self.dataReceived(rest)

    def _bodiless(self, code: int) -> bool:
        """HEAD, 204 and 304 responses end with their head, whatever it
        says of a length."""
        return self._head_only or code == 204 or code == 304

    def _whole(self, head: ResponseHead) -> None:
        """A counted body that came with its head: what L{_start_body},
        L{_counted} and L{_finish} do for it, with one call to the sink
        instead of three."""
        body, self._buffer = self._buffer, b""
        sink, self.sink = self.sink, None
        self._response_started = True
        self._timer_fn = None  # the response-header timer: the head is in
        self._end_exchange(not head.close and self._request_complete)
        if sink is not None:
            sink.response_whole(head, body)

    def _protocol_error(self, error: Exception) -> None:
        sink, self.sink = self.sink, None
        self.state = CLOSED
        if sink is not None:
            sink.response_failed(Failure(error), self._response_started)
        self.transport.abortConnection()

    def _start_body(self, head: ResponseHead) -> None:
        if head.close:
            self._keep_alive = False
        code = head.code
        length = head.length
        self._response_started = True
        self.state = BODY
        self.sink.response_head(head)
        if self.sink is None:  # the sink gave up during the head
            return
        if self._bodiless(code):
            # A head that announces a body it must not have: a sloppy
            # upstream may send that body anyway, later, where it would be
            # read as the next request's response.
            self._finish(reusable=self._keep_alive and not head.chunked and not head.length)
        elif head.chunked:
            self._decoder = ChunkedDecoder(self._deliver, self._chunked_done)
        elif length is not None:
            if length == 0:
                self._finish(reusable=self._keep_alive)
            else:
                self._remaining = length
        else:
            self._keep_alive = False  # read until the upstream closes

    def _counted(self, data: bytes) -> None:
        """A Content-Length body: pass bytes on until the count is reached."""
        remaining = self._remaining - len(data)
        if remaining > 0:
            self._remaining = remaining
            self._deliver(data)
            return
        self._remaining = None
        self.more_expected = False
        if remaining == 0:
            self._deliver(data)
            self._finish(reusable=self._keep_alive)
        else:  # more than announced: deliver what was promised, distrust the rest
            self._deliver(data[:remaining])
            self._finish(reusable=False)

    def _deliver(self, data: bytes) -> None:
        if data and self.sink is not None:
            self.sink.response_data(data)

    def _chunked_done(self, extra: bytes) -> None:
        """The last chunk and its trailers are in; malformed trailers
        refuse the response (L{trailer_fields})."""
        trailers = None
        lines = self._decoder.trailers
        if lines:
            try:
                trailers = trailer_fields(lines)
            except UpstreamProtocolError as e:
                self._protocol_error(e)
                return
        self._finish(reusable=self._keep_alive and not extra, trailers=trailers)

    def _finish(self, reusable: bool, trailers=None) -> None:
        self._decoder = None
        self._remaining = None
        self.more_expected = True
        sink, self.sink = self.sink, None
        if self.state == CLOSED or not self._request_complete:
            # a request body still unsent would be read as the next request
            reusable = False
        self._end_exchange(reusable)
        if sink is not None:
            if trailers:
                sink.response_done(trailers)
            else:
                sink.response_done()

    def _end_exchange(self, reusable: bool) -> None:
        """Back to the pool, or closed, before the sink hears that the
        response is done: a pipelined request that the sink's completion
        lets through can then reuse the connection at once."""
        self.state = DONE
        if self._buffer:  # bytes past the response: never the next one's
            self._buffer = b""
            reusable = False
        if reusable and self.transport is not None:
            self.state = IDLE
            self.idle_since = self.clock.seconds()
            if self.owner is not None:
                self.owner.connection_reusable(self)
        elif self.transport is not None:
            self._writer.lose()  # the connection's L{Writer}, made with it

    def _upgrade(self, head: ResponseHead) -> None:
        offered = _upgrade_offered(head)
        wanted = self._upgrade_to
        if wanted is None or offered is None or offered.lower() != wanted.lower():
            # a 101 nobody asked for would turn the client's connection
            # into a raw pipe to the upstream
            self._protocol_error(UpstreamProtocolError(
                f"upstream switched protocols to {offered!r} when {wanted!r} was requested"))
            return
        self._response_started = True
        self.state = TUNNEL
        self._writer.flush()  # the tunnel writes to the transport itself
        sink, self.sink = self.sink, None
        rest, self._buffer = self._buffer, b""
        sink.response_head(head)
        sink.response_upgraded(self, rest)


def _upgrade_offered(head: ResponseHead) -> Optional[bytes]:
    """The protocol a 101 switches to: its ``Upgrade`` value when its
    ``Connection`` lists ``upgrade``, else None (as Go reads it)."""
    upgrade = None
    tokens = set()
    for line in head.lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"upgrade" and upgrade is None:
            upgrade = value.strip()
    return upgrade if b"upgrade" in tokens else None
