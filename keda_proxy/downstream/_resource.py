"""
The request path as a twisted.web resource, for embedding the proxy in
any Twisted web application (L{keda_proxy.embedding}).

twisted.web reads a whole request body before it renders a resource, so
behind a stock C{Site} bodies are buffered (in memory or a temporary
file, as twisted.web decides) and then streamed upstream; responses
stream back.  The interceptor's own listeners use
L{keda_proxy.downstream.HTTP1ServerFactory}, which streams both ways.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from keda_proxy.interfaces import IDownstreamExchange, IRequestBody
from keda_proxy.wire._status import status_text

#: how much of a buffered body is handed on per write
_CHUNK = 64 * 1024


@implementer(IRequestBody)
class _BufferedBody:
    """A body twisted.web has already read whole (C{request.content}),
    handed on in chunks while the consumer keeps up."""

    done = True

    def __init__(self, content):
        self._content = content
        if content is None:
            self.length = 0
        else:
            content.seek(0, 2)
            self.length = content.tell()
            content.seek(0)
        self._consumer = None
        self._paused = False

    def attach(self, consumer) -> None:
        self._consumer = consumer
        self._pump()

    def detach(self) -> None:
        self._consumer = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._pump()

    def stopProducing(self) -> None:
        self._consumer = None

    def _pump(self) -> None:
        while self._consumer is not None and not self._paused:
            data = self._content.read(_CHUNK) if self._content is not None else b""
            if not data:
                consumer, self._consumer = self._consumer, None
                consumer.end_body()
                return
            self._consumer.write_body(data)


@implementer(IDownstreamExchange)
class _WebExchange:
    """A twisted.web request, seen as the request path sees every request."""

    code = None
    sent_bytes = 0
    _gone = False

    def __init__(self, request):
        self._request = request
        self.method = request.method
        self.target = request.uri
        self.path = request.path
        self.version = request.clientproto
        self.headers = {name: list(values)
                        for name, values in request.requestHeaders.getAllRawHeaders()}
        self.body = _BufferedBody(request.content)
        self.scheme = b"https" if request.isSecure() else b"http"
        peer = request.getClientAddress()
        self.client_address = getattr(peer, "host", None) or "unknown"
        self.client_port = getattr(peer, "port", 0)
        self.response_headers = {}
        # a proxy passes a response without Content-Type on as it is
        request.defaultContentType = None

    @property
    def finished(self) -> bool:
        return self._gone or bool(self._request.finished)

    def notify_done(self, callback) -> None:
        def gone(reason: Failure):
            self._gone = True
            callback(reason)

        self._request.notifyFinish().addCallbacks(lambda _: callback(None), gone)

    def _head(self, code: int, phrase: bytes, fields) -> None:
        request = self._request
        self.code = code
        request.setResponseCode(code, phrase)
        headers = request.responseHeaders
        for name, value in fields:
            headers.addRawHeader(name, value)
        for name, values in self.response_headers.items():
            headers.setRawHeaders(name, values)

    def respond(self, head) -> None:
        fields = []
        for line in head.block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                fields.append((name, value.strip()))
        self._head(head.code, head.phrase, fields)

    def respond_whole(self, head, body: bytes) -> None:
        self.respond(head)
        self.write(body)
        self.finish()

    def informational(self, head) -> None:
        """twisted.web's Request has no way to send a 1xx: dropped."""

    def answer(self, code: int, fields, body: bytes) -> None:
        self._head(code, status_text(code),
                   [*fields, (b"Content-Length", b"%d" % len(body))])
        self.write(body)
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.finished:
            self.sent_bytes += len(data)
            self._request.write(data)

    def finish(self, trailers=None) -> None:
        if not self.finished:
            self._request.finish()

    def abort(self) -> None:
        if not self.finished:
            self._request.loseConnection()

    def registerProducer(self, producer, streaming) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def take_over(self):
        raise NotImplementedError("twisted.web requests cannot be upgraded here")


class ReverseProxy(Resource):
    """Every request, whatever its path, goes through the request path of
    a L{keda_proxy.steps.Pipeline}."""

    isLeaf = True

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def render(self, request):
        self.pipeline.serve(_WebExchange(request))
        return NOT_DONE_YET
