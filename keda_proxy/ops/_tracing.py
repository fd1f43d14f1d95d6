"""
Request tracing over OTLP (``OTEL_EXPORTER_OTLP_TRACES_ENABLED``).

Each request gets a server span (the route, the status, whether it was a
cold start), a child span for the time it was held waiting for a ready
pod (and the fallback, if one was taken), and a child client span for
the upstream call (the pod or Service address).  A W3C ``traceparent``
from the client is continued, and the upstream receives one of the same
trace, naming the client span as its parent.

Why spans are not made with the SDK's tracer on the request path:
starting and ending three SDK spans costs tens of microseconds of Python,
a large share of what forwarding a request costs.  So the reactor thread
only draws ids, reads the clock and appends one tuple per request to a
bounded queue (L{Tracer}); an export thread (L{SpanExporter}) turns the
tuples into the SDK's C{ReadableSpan}s in batches and hands them to the
SDK's OTLP exporter, which reads the standard C{OTEL_EXPORTER_OTLP_*}
variables.  A collector that is slow or down never delays a request: a
full queue drops new spans, as Go's batch span processor does, and the
export thread logs how many.  (Dropping the oldest instead, as Python's
SDK does, frees a record made thousands of requests earlier on every
request while the collector is down: memory long out of the cache, which
cost about 5% of the throughput.)

Sampling follows the SDK's default, parent-based always-on: a request is
traced unless its ``traceparent`` says its parent was not sampled.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from typing import Callable, Optional, Tuple

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

#: spans kept while the collector is unreachable (the SDK's default)
MAX_QUEUE = 2048
#: spans per export call (the SDK's default)
MAX_BATCH = 512
#: seconds a stop waits for the last spans to be exported before it
#: interrupts the exporter (a collector that is down would hold the
#: process's exit for the exporter's retries, 10 s or more)
STOP_FLUSH = 5.0
#: the default service.name, unless OTEL_SERVICE_NAME or
#: OTEL_RESOURCE_ATTRIBUTES say otherwise
SERVICE_NAME = "keda-http-interceptor"

_HEX = frozenset(b"0123456789abcdef")


def parse_traceparent(value: Optional[bytes]) -> Optional[Tuple[int, int, int]]:
    """A W3C ``traceparent`` as C{(trace id, parent span id, flags)}, or None
    when it is missing or malformed (a new trace starts then)."""
    if not value:
        return None
    value = value.strip()
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" \
            or value[52:53] != b"-":
        return None
    version = value[:2]
    if version == b"ff" or (version == b"00" and len(value) != 55) \
            or (len(value) > 55 and value[55:56] != b"-"):
        return None
    head = value[:2] + value[3:35] + value[36:52] + value[53:55]
    if not _HEX.issuperset(head):
        return None
    trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(value[53:55], 16)


class RequestTrace:
    """One request's spans while it is served: ids and times only."""

    __slots__ = ("trace_id", "span_id", "parent_id", "client_id", "start", "hold_start",
                 "hold_end", "fallback", "peer", "client_start", "client_end")

    def __init__(self, trace_id: int, span_id: int, parent_id: Optional[int],
                 client_id: int, start: int):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.client_id = client_id
        self.start = start
        self.hold_start = self.hold_end = self.client_start = self.client_end = None
        self.fallback = False
        self.peer = None

    def upstream_traceparent(self) -> bytes:
        """The ``traceparent`` the upstream gets: this trace, with the client
        span as the parent."""
        return b"00-%032x-%016x-01" % (self.trace_id, self.client_id)


class _Unsampled(RequestTrace):
    """A request whose parent was not sampled: it is timed like any other,
    but nothing is exported, and the upstream gets the client's trace with
    the same decision."""

    __slots__ = ()

    def upstream_traceparent(self) -> bytes:
        return b"00-%032x-%016x-00" % (self.trace_id, self.parent_id)


@define
class Tracer:
    """Starts request traces on the reactor thread and queues finished
    ones for the export thread."""

    clock_ns: Callable[[], int] = time.time_ns
    rng: random.Random = field(factory=random.Random)
    #: finished spans waiting for export, at most L{MAX_QUEUE}
    queue: deque = field(factory=deque)
    #: spans not queued because the queue was full
    dropped: int = 0
    #: set when the queue holds a batch: wakes the export thread early
    batch_ready: threading.Event = field(factory=threading.Event)

    def start(self, traceparent: Optional[bytes]):
        """A trace for a request carrying C{traceparent} (or none)."""
        bits = self.rng.getrandbits
        parent = None if traceparent is None else parse_traceparent(traceparent)
        if parent is None:
            trace_id, parent_id = bits(128) or 1, None
        else:
            trace_id, parent_id, flags = parent
            if not flags & 1:
                return _Unsampled(trace_id, 0, parent_id, 0, 0)
        return RequestTrace(trace_id, bits(64) or 1, parent_id, bits(64) or 1,
                            self.clock_ns())

    def finish(self, trace, method: bytes, path: bytes, status: int, route,
               cold_start: Optional[bool]) -> None:
        """The request is over: queue its spans."""
        if trace.__class__ is not RequestTrace:
            return
        queue = self.queue
        if len(queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        queue.append((trace, self.clock_ns(), method, path, status,
                      route.key if route is not None else None, cold_start))
        if len(queue) == MAX_BATCH:  # once per batch: setting the event takes a lock
            self.batch_ready.set()


def _spans(record, resource, scope) -> list:
    """The SDK spans of one finished request (in the export thread)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace, end, method, path, status, route, cold_start = record
    sampled = TraceFlags(TraceFlags.SAMPLED)
    tid = trace.trace_id

    def context(span_id, remote=False):
        return SpanContext(tid, span_id, is_remote=remote, trace_flags=sampled)

    server = context(trace.span_id)
    method_name = method.decode("latin-1")
    attributes = {"http.request.method": method_name, "url.path": path.decode("latin-1"),
                  "http.response.status_code": status}
    if route is not None:
        namespace, _, name = route.partition("/")
        attributes.update({"keda.route.namespace": namespace, "keda.route.name": name})
    if cold_start is not None:
        attributes["keda.cold_start"] = cold_start
    error = Status(StatusCode.ERROR) if status >= 500 else Status(StatusCode.UNSET)
    spans = [ReadableSpan(
        name=f"{method_name} {route}" if route else method_name, context=server,
        parent=context(trace.parent_id, True) if trace.parent_id else None,
        resource=resource, attributes=attributes, kind=SpanKind.SERVER, status=error,
        start_time=trace.start, end_time=end, instrumentation_scope=scope)]
    if trace.hold_start is not None:
        spans.append(ReadableSpan(
            name="cold start wait", context=context(random.getrandbits(64) or 1), parent=server,
            resource=resource, kind=SpanKind.INTERNAL, attributes={
                "keda.fallback": trace.fallback},
            start_time=trace.hold_start, end_time=trace.hold_end or end,
            instrumentation_scope=scope))
    if trace.client_start is not None:
        host, port = trace.peer
        spans.append(ReadableSpan(
            name=method_name, context=context(trace.client_id), parent=server,
            resource=resource, kind=SpanKind.CLIENT, status=error, attributes={
                "http.request.method": method_name, "server.address": host,
                "server.port": port, "http.response.status_code": status},
            start_time=trace.client_start, end_time=trace.client_end or end,
            instrumentation_scope=scope))
    return spans


def exporter_for(protocol: str):
    """The SDK's span exporter for C{OTEL_EXPORTER_OTLP_TRACES_PROTOCOL}; it
    reads the standard C{OTEL_EXPORTER_OTLP_*} variables itself."""
    protocol = protocol.lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    return ConsoleSpanExporter()


def resource():
    """The SDK resource: C{OTEL_RESOURCE_ATTRIBUTES} and C{OTEL_SERVICE_NAME}
    over our default service name."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                           SERVICE_NAME)})


@define(slots=False, eq=False)
class SpanExporter(Service):
    """Exports a L{Tracer}'s queue from a daemon thread, every
    C{OTEL_BSP_SCHEDULE_DELAY} milliseconds or as soon as a batch is full."""

    tracer: Tracer
    exporter: object
    reactor: object
    schedule_delay: float = field(
        factory=lambda: float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000")) / 1000)
    stop_flush: float = STOP_FLUSH
    _thread: Optional[threading.Thread] = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    #: L{Tracer.dropped} as last logged
    _dropped: int = field(default=0, init=False)
    _shut: bool = field(default=False, init=False)
    _shut_lock: threading.Lock = field(factory=threading.Lock, init=False)

    def startService(self):
        super().startService()
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._resource = resource()
        self._scope = InstrumentationScope("keda_proxy")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="otlp-spans", daemon=True)
        self._thread.start()

    def stopService(self):
        """Export what is queued, off the reactor thread, for at most
        C{stop_flush} seconds; then shut the exporter down, which ends its
        retries."""
        super().stopService()
        self._stopping = True
        self.tracer.batch_ready.set()
        done = Deferred()
        thread = self._thread

        def join():
            thread.join(timeout=self.stop_flush)
            if thread.is_alive():
                self._shut_exporter()
                thread.join(timeout=1)
            self.reactor.callFromThread(done.callback, None)

        threading.Thread(target=join, name="otlp-spans-stop", daemon=True).start()
        return done

    def _run(self) -> None:
        ready = self.tracer.batch_ready
        while True:
            ready.wait(self.schedule_delay)
            ready.clear()
            stopping = self._stopping
            self.export_queued()
            if stopping:
                self._shut_exporter()
                return

    def _shut_exporter(self) -> None:
        """Shut the exporter down once, from whichever thread gets here
        first (the export thread, or a stop that waited long enough)."""
        with self._shut_lock:
            if self._shut:
                return
            self._shut = True
        try:
            self.exporter.shutdown()
        except Exception:  # noqa: BLE001 - nothing to tell at shutdown
            pass

    def _log_dropped(self) -> None:
        """One line per export round after which the queue overflowed."""
        dropped = self.tracer.dropped
        if dropped != self._dropped:
            self.reactor.callFromThread(
                log.warn, "trace export queue full ({size} spans): {n} requests' spans dropped",
                size=MAX_QUEUE, n=dropped - self._dropped)
            self._dropped = dropped

    def export_queued(self) -> None:
        """Export every queued span, a batch at a time, and say how many
        were dropped since the last round (export thread)."""
        self._log_dropped()
        queue = self.tracer.queue
        while queue and not self._shut:  # a stop gave up on the exporter: drop the rest
            batch = []
            while queue and len(batch) < MAX_BATCH:
                batch.extend(_spans(queue.popleft(), self._resource, self._scope))
            try:
                self.exporter.export(batch)
            except Exception as e:  # noqa: BLE001 - a failed export drops its batch
                self.reactor.callFromThread(
                    log.warn, "trace export failed ({error}); {n} spans dropped",
                    error=str(e), n=len(batch))


__all__ = ["RequestTrace", "SpanExporter", "Tracer", "exporter_for", "parse_traceparent"]
