"""
Tracing (keda_proxy.ops._tracing) and OTLP metrics push (keda_proxy.ops._otlpmetrics):
the spans a request makes, the traceparent the upstream receives, and what
a real OTLP/HTTP collector is sent, parsed with opentelemetry-proto.
"""

import itertools

import pytest
import pytest_twisted
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from twisted.internet import reactor
from twisted.web import resource, server

from keda_proxy.ops import _otlpmetrics as otlpmetrics
from keda_proxy.ops import _tracing as tracing
from keda_proxy.ops._metrics import ProxyMetrics
from keda_proxy.ops._tracing import SpanExporter, Tracer, parse_traceparent
from keda_proxy.state._model import Timeouts
from tests.builders import endpoint_slice, route
from tests.netsupport import wait_for
from tests.proxyfakes import OK_5, Harness
from tests.test_integration import Rig
from tests.test_proxy import warm

PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN = 0xB7AD6B7169203331


@pytest.mark.parametrize("value, expected", [
    (PARENT, (TRACE_ID, PARENT_SPAN, 1)),
    (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", (TRACE_ID, PARENT_SPAN, 0)),
    (b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later", (TRACE_ID, PARENT_SPAN, 1)),
    (b"00-00000000000000000000000000000000-b7ad6b7169203331-01", None),  # zero trace id
    (b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),  # zero span id
    (b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),  # version ff
    (b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),  # upper case
    (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", None),  # 00 is 55 long
    (b"garbage", None), (b"", None), (None, None),
])
def test_traceparent_is_read_as_w3c_trace_context_says(value, expected):
    assert parse_traceparent(value) == expected


def _traced(*routes, **kw):
    h = Harness()
    clock = itertools.count(1_000_000_000, 1_000_000)  # one ms per reading
    h.pipeline.tracer = Tracer(clock_ns=lambda: next(clock))
    warm(h, *routes, **kw)
    return h


def _exported(h):
    """The SDK spans of every finished request."""
    resource_ = tracing.resource()
    spans = []
    while h.pipeline.tracer.queue:
        spans += tracing._spans(h.pipeline.tracer.queue.popleft(), resource_, None)
    return spans


def test_a_cold_start_makes_a_server_span_a_wait_span_and_a_client_span_of_one_trace():
    h = _traced(slices=[endpoint_slice(ready=False)])
    h.get(extra=b"traceparent: " + PARENT + b"\r\n")
    warm(h)  # the pod is ready: the request is released
    up = h.upstream()
    sent = up.request_headers()[b"traceparent"]
    assert sent[0].startswith(b"00-%032x-" % TRACE_ID) and sent[0].endswith(b"-01")
    assert PARENT not in up.sent()  # replaced, not forwarded twice
    up.respond(OK_5)
    server, wait, client = _exported(h)
    assert {s.context.trace_id for s in (server, wait, client)} == {TRACE_ID}
    assert server.parent.span_id == PARENT_SPAN and server.kind.name == "SERVER"
    assert wait.parent.span_id == client.parent.span_id == server.context.span_id
    assert client.kind.name == "CLIENT"
    assert sent[0] == b"00-%032x-%016x-01" % (TRACE_ID, client.context.span_id)
    assert server.attributes["keda.route.namespace"] == "default"
    assert server.attributes["keda.route.name"] == "web"
    assert server.attributes["keda.cold_start"] is True
    assert server.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == "127.0.0.1"
    assert wait.attributes["keda.fallback"] is False
    assert wait.start_time < wait.end_time <= client.start_time


def test_a_fallback_taken_is_on_the_wait_span():
    from keda_proxy.state._model import ServiceRef

    h = _traced(route(fallback=ServiceRef(name="web", port_name="http"),
                      timeouts=Timeouts(readiness=1)),
                slices=[endpoint_slice(ready=False)])
    h.get()
    h.clock.advance(1)
    h.upstream().respond(OK_5)
    server, wait, client = _exported(h)
    assert wait.attributes["keda.fallback"] is True
    assert "keda.cold_start" not in server.attributes  # served by the fallback


def test_a_warm_request_has_no_wait_span_and_a_new_trace_without_traceparent():
    h = _traced()
    h.get()
    h.upstream().respond(OK_5)
    server, client = _exported(h)
    assert server.parent is None and server.attributes["keda.cold_start"] is False
    assert client.context.trace_id == server.context.trace_id != 0


def test_an_unrouted_request_has_a_server_span_only():
    h = _traced()
    h.get(host=b"nowhere.example")
    (server,) = _exported(h)
    assert server.attributes["http.response.status_code"] == 404


def test_an_unsampled_parent_is_continued_but_not_recorded():
    h = _traced()
    unsampled = PARENT[:-2] + b"00"
    h.get(extra=b"traceparent: " + unsampled + b"\r\n")
    up = h.upstream()
    assert up.request_headers()[b"traceparent"] == [unsampled]
    up.respond(OK_5)
    assert _exported(h) == []


def test_a_full_queue_drops_new_spans_and_counts_them():
    tracer = Tracer()
    trace = tracer.start(None)
    for _ in range(tracing.MAX_QUEUE):
        tracer.finish(trace, b"GET", b"/", 200, None, None)
    assert tracer.batch_ready.is_set() and tracer.dropped == 0
    first = tracer.queue[0]
    late = tracer.start(None)
    for _ in range(10):
        tracer.finish(late, b"GET", b"/late", 200, None, None)
    assert len(tracer.queue) == tracing.MAX_QUEUE
    assert tracer.queue[0] is first and all(r[0] is trace for r in tracer.queue)
    assert tracer.dropped == 10


class _InlineReactor:
    """callFromThread, run at once: the test is the export thread."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_the_export_round_says_how_many_spans_were_dropped_once():
    from twisted.logger import capturedLogs

    tracer = Tracer()
    trace = tracer.start(None)
    for _ in range(tracing.MAX_QUEUE + 7):
        tracer.finish(trace, b"GET", b"/", 200, None, None)
    batches = []
    sink = type("Sink", (), {"export": lambda self, batch: batches.append(batch)})()
    exporter = SpanExporter(tracer, sink, _InlineReactor())
    exporter._resource, exporter._scope = tracing.resource(), None
    with capturedLogs() as events:
        exporter.export_queued()
        exporter.export_queued()  # nothing new dropped: nothing said
    dropped = [e for e in events if "dropped" in e["log_format"]]
    assert len(dropped) == 1 and dropped[0]["n"] == 7
    assert sum(len(b) for b in batches) == tracing.MAX_QUEUE and not tracer.queue



@pytest.fixture
def sdk_log():
    """The SDK's loggers routed to Twisted's log (as the app does), and
    restored afterwards."""
    import logging

    from keda_proxy.ops._sdklog import route_sdk_logging

    sdk = logging.getLogger("opentelemetry")
    saved = sdk.handlers[:], sdk.level, sdk.propagate
    handler = route_sdk_logging(_InlineReactor())
    yield
    sdk.removeHandler(handler)
    sdk.handlers[:], sdk.propagate = saved[0], saved[2]
    sdk.setLevel(saved[1])


def test_the_sdks_warnings_are_lines_of_our_log(sdk_log, capsys):
    import logging

    from twisted.logger import LogLevel, capturedLogs

    with capturedLogs() as events:
        logging.getLogger("opentelemetry.exporter.otlp").warning("collector %s", "away")
        logging.getLogger("opentelemetry.sdk").info("chatter")
    assert [(e["log_level"], e["logger"], e["text"]) for e in events] == [
        (LogLevel.warn, "opentelemetry.exporter.otlp", "collector away")]
    assert capsys.readouterr().err == ""


def test_an_unreachable_collector_is_reported_in_our_log(sdk_log, monkeypatch):
    from twisted.logger import capturedLogs

    from tests.netsupport import free_port

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                       f"http://127.0.0.1:{free_port()}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")
    tracer = Tracer()
    tracer.finish(tracer.start(None), b"GET", b"/", 200, None, None)
    exporter = SpanExporter(tracer, tracing.exporter_for("http/protobuf"), _InlineReactor())
    exporter._resource, exporter._scope = tracing.resource(), None
    with capturedLogs() as events:
        exporter.export_queued()
    texts = [e["text"] for e in events if e.get("logger", "").startswith("opentelemetry")]
    assert texts and any("export" in t for t in texts)



class _StuckExporter:
    """An exporter whose export blocks, as the SDK's does while it retries a
    collector that is down, until it is shut down."""

    def __init__(self):
        import threading

        self.exporting = threading.Event()
        self.shut = threading.Event()
        self.batches = 0

    def export(self, batch):
        self.batches += 1
        self.exporting.set()
        self.shut.wait(30)

    def shutdown(self):
        self.shut.set()


@pytest_twisted.inlineCallbacks
def test_a_stop_waits_for_a_stuck_export_only_so_long():
    from twisted.internet.threads import deferToThread

    tracer = Tracer()
    for _ in range(tracing.MAX_BATCH * 2):  # a second batch is never tried
        tracer.finish(tracer.start(None), b"GET", b"/", 200, None, None)
    stuck = _StuckExporter()
    exporter = SpanExporter(tracer, stuck, reactor, schedule_delay=0.01, stop_flush=0.3)
    exporter.startService()
    assert (yield deferToThread(stuck.exporting.wait, 10))
    start = reactor.seconds()
    yield exporter.stopService()
    assert 0.25 <= reactor.seconds() - start < 2.5
    assert stuck.shut.is_set() and stuck.batches == 1
    assert not exporter._thread.is_alive()


# -- a real OTLP/HTTP collector ------------------------------------------------

class _Collector(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.traces = []
        self.metrics = []

    def render_POST(self, request):
        body = request.content.read()
        if request.path == b"/v1/traces":
            self.traces.append(ExportTraceServiceRequest.FromString(body))
        elif request.path == b"/v1/metrics":
            self.metrics.append(ExportMetricsServiceRequest.FromString(body))
        request.setHeader(b"content-type", b"application/x-protobuf")
        return b""


@pytest.fixture
def collector(monkeypatch):
    c = _Collector()
    port = reactor.listenTCP(0, server.Site(c), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", base + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", base + "/v1/metrics")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    yield c
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.inlineCallbacks
def test_spans_reach_a_real_collector_with_the_clients_trace(collector, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    rig = Rig().start(env={"OTEL_EXPORTER_OTLP_TRACES_ENABLED": "true"})
    exporter = SpanExporter(rig.ic.pipeline.tracer, tracing.exporter_for("http/protobuf"),
                            reactor)
    exporter.startService()
    try:
        rig.load()
        resp = yield rig.client.http.get(rig.url("/x"), headers={
            "Host": "web.example", "traceparent": PARENT.decode()})
        assert resp.code == 200
        yield resp.content()
        yield wait_for(lambda: collector.traces, what="spans at the collector")
        (resource_spans,) = collector.traces[0].resource_spans
        attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        assert attrs["service.name"] == tracing.SERVICE_NAME
        assert attrs["deployment.environment"] == "test"
        spans = resource_spans.scope_spans[0].spans
        assert {s.trace_id for s in spans} == {TRACE_ID.to_bytes(16, "big")}
        server_span = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
        assert server_span.parent_span_id == PARENT_SPAN.to_bytes(8, "big")
        backend_saw = rig.backend.seen[-1].getHeader(b"traceparent")
        client_span = next(s for s in spans if s.kind == s.SPAN_KIND_CLIENT)
        assert backend_saw == b"00-%s-%s-01" % (TRACE_ID.to_bytes(16, "big").hex().encode(),
                                                client_span.span_id.hex().encode())
    finally:
        yield exporter.stopService()
        yield rig.stop()


@pytest_twisted.inlineCallbacks
def test_an_unreachable_collector_never_holds_up_a_request(monkeypatch):
    from tests.netsupport import free_port

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                       f"http://127.0.0.1:{free_port()}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    rig = Rig().start(env={"OTEL_EXPORTER_OTLP_TRACES_ENABLED": "true"})
    exporter = SpanExporter(rig.ic.pipeline.tracer, tracing.exporter_for("http/protobuf"),
                            reactor)
    exporter.startService()
    try:
        rig.load()
        for _ in range(20):
            start = reactor.seconds()
            resp = yield rig.client.http.get(rig.url(), headers={"Host": "web.example"})
            yield resp.content()
            assert resp.code == 200 and reactor.seconds() - start < 0.5
    finally:
        yield exporter.stopService()
        yield rig.stop()


# -- OTLP metrics push ---------------------------------------------------------

def test_the_prometheus_instruments_convert_to_otlp_metrics():
    from twisted.internet.task import Clock

    from keda_proxy.steps._counting import QueueCounter

    counter = QueueCounter()
    counter.sync_keys(["default/web"])
    counter.enter("default/web")
    metrics = ProxyMetrics(Clock(), counter)
    data = otlpmetrics.to_metrics_data(metrics.registry.collect(), tracing.resource(), 1, 2)
    by_name = {m.name: m for m in data.resource_metrics[0].scope_metrics[0].metrics}
    concurrency = [n for n in by_name if "concurrency" in n]
    assert concurrency, sorted(by_name)
    (point,) = by_name[concurrency[0]].data.data_points
    assert point.value == 1 and point.attributes


@pytest_twisted.inlineCallbacks
def test_metrics_are_pushed_to_a_real_collector(collector):
    rig = Rig().start()
    pusher = otlpmetrics.MetricsPusher(rig.ic.metrics.registry,
                                       otlpmetrics.exporter_for("http/protobuf"), reactor,
                                       interval=0.05)
    pusher.startService()
    try:
        rig.load()
        resp = yield rig.client.http.get(rig.url(), headers={"Host": "web.example"})
        yield resp.content()
        yield wait_for(lambda: any(_metric_names(r) for r in collector.metrics),
                       what="metrics at the collector")
        names = set().union(*(_metric_names(r) for r in collector.metrics))
        assert any(name.startswith("interceptor_") for name in names), names
    finally:
        yield pusher.stopService()
        yield rig.stop()


def _metric_names(request):
    return {m.name for rm in request.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics}
