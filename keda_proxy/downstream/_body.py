"""
A request body in flight, from the client to whoever consumes it.

It is never held whole: until a consumer attaches (the upstream
connection, once dialled) it buffers up to L{BODY_HIGH_WATER} and then
pauses the client; after that each chunk goes straight through, and the
consumer's transport pausing the body pauses the client too.
"""

from __future__ import annotations

from typing import Optional

from zope.interface import implementer

from keda_proxy.interfaces import IRequestBody

#: Request-body bytes buffered before the client is paused.
BODY_HIGH_WATER = 256 * 1024
#: A request body must keep coming: it has this long to start, and every
#: byte received buys 1/BODY_MIN_RATE s more (Apache's mod_reqtimeout
#: rule).  A body trickled in to hold a request open, and with it the
#: route's Concurrency and KEDA's scaling, is cut.  Time the proxy itself
#: holds the client back (a slow upstream) does not count.
BODY_GRACE = 30.0
BODY_MIN_RATE = 500.0


@implementer(IRequestBody)
class RequestBody:
    """The body of one request (L{IRequestBody}).

    @ivar received: body bytes received so far.
    @ivar paused: whether the body holds the client back now.
    """

    trailers = None

    def __init__(self, length: Optional[int], pause, resume):
        """
        @param length: the body's length, or None when chunked.
        @param pause: called to stop reading from the client.
        @param resume: called to read from it again.
        """
        self.length = length
        self.done = length == 0
        self.received = 0
        self.paused = False
        self._buffer: list = []
        self._buffered = 0
        self._consumer = None
        self._pause = pause
        self._resume = resume

    def data_received(self, data: bytes) -> None:
        """Body bytes from the client (never empty)."""
        self.received += len(data)
        consumer = self._consumer
        if consumer is not None:
            consumer.write_body(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER and not self.paused:
            self.paused = True
            self._pause()

    def end(self, trailers=None) -> None:
        """The whole body has arrived; C{trailers}, if any, as C{(name,
        value)} pairs."""
        self.done = True
        self.trailers = trailers
        consumer = self._consumer
        if consumer is not None:
            self._end(consumer)

    def _end(self, consumer) -> None:
        if self.trailers:
            consumer.end_body(self.trailers)
        else:
            consumer.end_body()

    def attach(self, consumer) -> None:
        """Send everything buffered to C{consumer}, then stream to it."""
        self._consumer = consumer
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for chunk in buffered:
            consumer.write_body(chunk)
        if self.done:
            self._end(consumer)
        if self.paused:
            self.paused = False
            self._resume()

    def detach(self) -> None:
        self._consumer = None

    # IPushProducer: the consumer's transport asks the client to wait
    def pauseProducing(self) -> None:
        if not self.paused and not self.done:
            self.paused = True
            self._pause()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._resume()

    def stopProducing(self) -> None:
        self._consumer = None


class _NoBody:
    """The body of every request without one (most of them): complete
    from the start, so nothing ever writes to it or pauses through it."""

    length = 0
    done = True
    received = 0
    paused = False
    trailers = None

    def attach(self, consumer) -> None:
        consumer.end_body()

    def detach(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


NO_BODY = implementer(IRequestBody)(_NoBody)()


class BodyRate:
    """Watches one request body for the minimum rate (L{BODY_GRACE},
    L{BODY_MIN_RATE}): one timer per request with a body, which calls
    C{too_slow} if the body falls behind.  Time while the body is paused
    (by the proxy: a slow upstream) does not count."""

    __slots__ = ("_clock", "_body", "_too_slow", "_grace", "_rate", "_base", "_timer")

    def __init__(self, clock, body: RequestBody, too_slow, since: float,
                 grace: float = BODY_GRACE, rate: float = BODY_MIN_RATE):
        self._clock = clock
        self._body = body
        self._too_slow = too_slow
        self._grace = grace
        self._rate = rate
        self._base = since + grace
        self._timer = clock.callLater(grace, self._check)

    def refresh(self, now: float) -> None:
        """The proxy let the body flow again: its grace starts from now."""
        self._base = max(self._base, now + self._grace - self._body.received / self._rate)

    def _check(self) -> None:
        self._timer = None
        body = self._body
        now = self._clock.seconds()
        if body.paused:  # the proxy holds it back: its time does not count
            self.refresh(now)
        due = self._base + body.received / self._rate
        if due > now:
            self._timer = self._clock.callLater(due - now, self._check)
            return
        self._too_slow()

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
