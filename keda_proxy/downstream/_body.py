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
