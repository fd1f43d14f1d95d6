"""
An upstream HTTP/2 server made of the C{h2} library, facing a proxy's
HTTP/2 client connection over a C{StringTransport}: the tests read what
the client sent as h2 events, and answer with frames, all in memory.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from keda_proxy.interfaces import IResponseSink

#: a request head as the proxy builds it (L{keda_proxy.wire._headers.request_head})
GET = (b"GET /hello?x=1 HTTP/1.1\r\nHost: web.example\r\nAccept: */*\r\n"
       b"X-Forwarded-For: 10.1.2.3\r\n\r\n")
POST = (b"POST /upload HTTP/1.1\r\nHost: web.example\r\nTransfer-Encoding: chunked\r\n"
        b"TE: trailers\r\nContent-Type: application/grpc\r\n\r\n")


class FakeServer:
    """The upstream: an h2 server connection fed what C{client} writes to
    C{transport}, whose frames go back to C{client}."""

    def __init__(self, client, transport: StringTransport, settings=None):
        self.client = client
        self.transport = transport
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        #: every event seen, in order
        self.events: list = []

    def read(self) -> list:
        """The events of what the client sent since the last read; any
        data is acknowledged unless C{hold} (see L{read_held})."""
        return self._read(ack=True)

    def read_held(self) -> list:
        """As L{read}, acknowledging nothing: the client's windows close."""
        return self._read(ack=False)

    def _read(self, ack: bool) -> list:
        data = self.transport.value()
        self.transport.clear()
        events = self.h2.receive_data(data) if data else []
        if ack:
            for e in events:
                if isinstance(e, DataReceived) and e.flow_controlled_length:
                    self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.events += events
        return events

    def flush(self) -> None:
        """Send what the server has to say."""
        data = self.h2.data_to_send()
        if data:
            self.client.dataReceived(data)

    def requests(self) -> dict:
        """stream id -> request headers, of every request seen so far."""
        return {e.stream_id: e.headers for e in self.events if isinstance(e, RequestReceived)}

    def respond(self, stream_id: int, headers, body: bytes = None, trailers=None,
                end: bool = True) -> None:
        h2 = self.h2
        h2.send_headers(stream_id, headers, end_stream=end and body is None and not trailers)
        if body is not None:
            h2.send_data(stream_id, body, end_stream=end and not trailers)
        if trailers:
            h2.send_headers(stream_id, trailers, end_stream=True)
        self.flush()

    def send_data(self, stream_id: int, size: int, end: bool = False) -> int:
        """Send C{size} bytes on a stream as fast as the windows allow,
        reading what the client says in between (its WINDOW_UPDATEs); how
        many went before the windows closed for good."""
        h2 = self.h2
        sent = 0
        while sent < size:
            n = min(size - sent, h2.max_outbound_frame_size,
                    h2.local_flow_control_window(stream_id))
            if n <= 0:
                self.flush()
                self.read()
                if h2.local_flow_control_window(stream_id) <= 0:
                    break
                continue
            sent += n
            h2.send_data(stream_id, b"x" * n, end_stream=end and sent == size)
        self.flush()
        return sent


def handshake(client, transport: StringTransport, settings=None) -> FakeServer:
    """A server for a client connection that just connected: both
    prefaces and SETTINGS exchanged."""
    server = FakeServer(client, transport, settings)
    server.read()
    server.flush()
    server.read()  # the client's SETTINGS ACK
    return server


@implementer(IResponseSink)
class Sink:
    """Records what a response does, in order."""

    def __init__(self):
        self.calls: list = []
        self.head = None
        self.body = b""
        self.trailers = None
        self.failure = None
        self.started = None
        self.done = False

    def response_head(self, head):
        self.head = head
        self.calls.append("head")

    def response_data(self, data):
        self.body += data
        self.calls.append("data")

    def response_done(self, trailers=None):
        self.done = True
        self.trailers = trailers
        self.calls.append("done")

    def response_whole(self, head, body):
        raise AssertionError("an HTTP/2 response never comes whole")

    def response_failed(self, reason, response_started):
        self.failure = reason
        self.started = response_started
        self.calls.append("failed")

    def response_informational(self, head):
        self.calls.append(("informational", head.code))

    def response_upgraded(self, connection, rest):
        raise AssertionError("no upgrade over HTTP/2")


class Producer:
    """A request body's producer, recording pauses."""

    def __init__(self):
        self.paused = False
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1

    def stopProducing(self):
        pass
