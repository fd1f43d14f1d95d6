"""
Real gRPC peers (grpcio) for the HTTP/2 tests: a server and a client
speaking raw bytes through generic handlers, no protobuf, so what crosses
the proxy is exactly what a gRPC service and client put on the wire
(length-prefixed messages, ``grpc-timeout``, ``grpc-status`` and
``grpc-message`` trailers, RST_STREAM on cancel).

grpcio is blocking and runs its own threads: tests call the client from a
thread (L{call}) so that the in-process proxy's reactor keeps running, and
every call carries a deadline so nothing can hang.  The server's waiting
handlers are bounded too (L{HANG_LIMIT}).
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from twisted.internet import threads

#: every method lives under this service name
SERVICE = "keda.test.Peer"

#: messages up to this size, each way, on both ends (8 MiB and room)
MAX_MESSAGE = 16 * 1024 * 1024

#: how long a handler that waits for its call to end waits at most
HANG_LIMIT = 30.0

#: the appProtocol that tells the proxy a Service port speaks h2c
H2C = "kubernetes.io/h2c"

MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


def _abort_with(context, spec: bytes):
    """C{spec} is C{b"CODE:message"}: end the call with that status."""
    code, _, message = spec.decode("utf-8").partition(":")
    context.abort(grpc.StatusCode[code], message)


class PeerServer:
    """A gRPC server with one method of each kind and a few for the edges.

     - C{Echo} (unary): the request back, with initial metadata
       C{x-peer: echo} and trailing metadata C{x-peer-trailer: done};
     - C{Fail} (unary): the request is C{b"CODE:message"}; the call ends
       with that status and message before any response (trailers-only);
     - C{Count} (server streaming): the request is C{b"N"} or
       C{b"N:CODE:message"}: N messages C{b"0"}, C{b"1"}, ..., then OK or
       that status;
     - C{Sum} (client streaming): the total size of the messages, as digits;
     - C{EchoEach} (bidi): each message back as it comes;
     - C{Sleep} (unary) and C{Drip} (server streaming; sends C{b"first"}
       at once): wait until the call ends without answering, and record
       in L{cancelled} the request (a token) when it ended under them;
     - C{Big} (unary): the request reversed (8 MiB each way, say);
     - C{Flood} (server streaming): the request is C{b"N:SIZE"}: N
       messages of SIZE bytes, as fast as flow control lets them go, the
       number handed to grpcio so far kept in L{flooded};
     - C{Gated} (client streaming): reads one message, then nothing until
       L{gate} is set; then the rest, and answers how many there were.

    Every call is recorded in L{calls} as C{(method, metadata dict, peer)}.
    """

    def __init__(self):
        self.calls: list = []
        #: the request bytes of each C{Sleep}/C{Drip} call that ended (client
        #: cancel, deadline, connection lost) while its handler waited
        self.cancelled: list = []
        #: the request bytes of each C{Sleep}/C{Drip} call now waiting
        self.waiting: list = []
        #: messages C{Flood} has handed to grpcio
        self.flooded = 0
        #: set to let C{Gated} read on
        self.gate = threading.Event()
        self._server = None
        self.port = None

    # -- handlers (run on the server's worker threads) --

    def _seen(self, method, context):
        self.calls.append((method, dict(context.invocation_metadata()), context.peer()))

    def echo(self, request, context):
        self._seen("Echo", context)
        context.send_initial_metadata((("x-peer", "echo"),))
        context.set_trailing_metadata((("x-peer-trailer", "done"),))
        return request

    def fail(self, request, context):
        self._seen("Fail", context)
        _abort_with(context, request)

    def count(self, request, context):
        self._seen("Count", context)
        n, _, error = request.partition(b":")
        for i in range(int(n)):
            yield b"%d" % i
        if error:
            _abort_with(context, error)

    def sum(self, request_iterator, context):
        self._seen("Sum", context)
        return b"%d" % sum(len(m) for m in request_iterator)

    def echo_each(self, request_iterator, context):
        self._seen("EchoEach", context)
        yield from request_iterator

    def _until_ended(self, token, context):
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()
        self.waiting.append(token)
        try:
            ended.wait(HANG_LIMIT)
        finally:
            self.waiting.remove(token)
        if ended.is_set():
            self.cancelled.append(token)

    def sleep(self, request, context):
        self._seen("Sleep", context)
        self._until_ended(request, context)
        return b"woke up"

    def drip(self, request, context):
        self._seen("Drip", context)
        yield b"first"
        self._until_ended(request, context)

    def big(self, request, context):
        self._seen("Big", context)
        return request[::-1]

    def flood(self, request, context):
        self._seen("Flood", context)
        n, size = map(int, request.split(b":"))
        message = b"f" * size
        for _ in range(n):
            yield message
            self.flooded += 1

    def gated(self, request_iterator, context):
        self._seen("Gated", context)
        first = next(request_iterator, None)
        self.gate.wait(HANG_LIMIT)
        return b"%d" % ((first is not None) + sum(1 for _ in request_iterator))

    def handler(self) -> grpc.GenericRpcHandler:
        """Raw bytes in and out: no (de)serializers anywhere."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Sum": grpc.stream_unary_rpc_method_handler(self.sum),
            "EchoEach": grpc.stream_stream_rpc_method_handler(self.echo_each),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "Drip": grpc.unary_stream_rpc_method_handler(self.drip),
            "Big": grpc.unary_unary_rpc_method_handler(self.big),
            "Flood": grpc.unary_stream_rpc_method_handler(self.flood),
            "Gated": grpc.stream_unary_rpc_method_handler(self.gated),
        })

    # -- lifecycle --

    def start(self, tls=None, host: str = "127.0.0.1") -> int:
        """Listen on an ephemeral port of C{host}: h2c, or TLS (ALPN h2)
        with C{tls}, a trustme leaf certificate; the port."""
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                                   handlers=[self.handler()], options=MESSAGE_OPTIONS)
        if tls is None:
            self.port = self._server.add_insecure_port(f"{host}:0")
        else:
            chain = b"".join(blob.bytes() for blob in tls.cert_chain_pems)
            creds = grpc.ssl_server_credentials([(tls.private_key_pem.bytes(), chain)])
            self.port = self._server.add_secure_port(f"{host}:0", creds)
        if not self.port:
            raise RuntimeError("the gRPC server could not listen")
        self._server.start()
        return self.port

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None

    def peers(self) -> set:
        """The distinct client addresses the server was called from."""
        return {peer for _, _, peer in self.calls}


class PeerClient:
    """The methods of L{PeerServer} as grpcio multi-callables on one channel
    (one connection): each takes bytes and gives bytes, and each call
    needs a C{timeout}."""

    def __init__(self, channel: grpc.Channel):
        self.channel = channel
        self.echo = channel.unary_unary(path("Echo"))
        self.fail = channel.unary_unary(path("Fail"))
        self.count = channel.unary_stream(path("Count"))
        self.sum = channel.stream_unary(path("Sum"))
        self.echo_each = channel.stream_stream(path("EchoEach"))
        self.sleep = channel.unary_unary(path("Sleep"))
        self.drip = channel.unary_stream(path("Drip"))
        self.big = channel.unary_unary(path("Big"))
        self.flood = channel.unary_stream(path("Flood"))
        self.gated = channel.stream_unary(path("Gated"))

    def close(self) -> None:
        self.channel.close()

    @classmethod
    def plain(cls, port: int, authority: str | None = None, host: str = "127.0.0.1"):
        """h2c with prior knowledge (what gRPC always does without TLS);
        C{authority} is the C{:authority} of every call, which the proxy
        routes on."""
        options = _options(authority)
        return cls(grpc.insecure_channel(f"{host}:{port}", options=options))

    @classmethod
    def tls(cls, port: int, root_pem: bytes, server_name: str,
            authority: str | None = None, host: str = "127.0.0.1"):
        """TLS to C{host}:C{port}, checking the server's certificate for
        C{server_name} (also the SNI) against C{root_pem}."""
        options = _options(authority or server_name)
        options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
        return cls(grpc.secure_channel(f"{host}:{port}", creds, options=options))


def _options(authority: str | None) -> list:
    options = list(MESSAGE_OPTIONS)
    options += [
        ("grpc.enable_http_proxy", 0),  # loopback only, whatever the environment says
        ("grpc.enable_retries", 0),  # one call is one request
        ("grpc.initial_reconnect_backoff_ms", 100),
    ]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return options


def call(f, *args, **kw):
    """Run blocking C{f(*args, **kw)} on the reactor's thread pool: a
    Deferred of its result."""
    return threads.deferToThread(f, *args, **kw)


def status_of(f, *args, **kw):
    """C{f(*args, **kw)} expecting it to fail: C{(code, details)} of the
    L{grpc.RpcError} it raised; an AssertionError if it succeeded."""
    try:
        result = f(*args, **kw)
        if hasattr(result, "__next__"):
            result = list(result)
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError(f"the call succeeded: {result!r:.200}")


def stream_and_status(f, *args, **kw):
    """The messages a streaming call gave before it ended, and its
    C{(code, details)}."""
    got = []
    stream = f(*args, **kw)
    try:
        for message in stream:
            got.append(message)
    except grpc.RpcError as e:
        return got, (e.code(), e.details())
    return got, (stream.code(), stream.details())
