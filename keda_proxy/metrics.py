"""
Prometheus metrics with the names the Go interceptor's OpenTelemetry
exporter produces, served on ``OTEL_PROM_EXPORTER_PORT``.

 - ``interceptor_request_count_total{code,method,route_name,route_namespace}``
 - ``interceptor_request_duration_seconds`` (histogram, same labels)
 - ``interceptor_request_concurrency{route_name,route_namespace}``

Concurrency is read from the queue counter at scrape time rather than
kept twice on the request path.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource

from keda_proxy.counting import QueueCounter

_STANDARD_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})

# The OTel exporter has no *_created series; keep the output the same.
disable_created_metrics()

#: The OTel HTTP semantic-convention buckets Go uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class _ConcurrencyCollector:
    def __init__(self, counter: QueueCounter):
        self._counter = counter

    def collect(self):
        family = GaugeMetricFamily(
            "interceptor_request_concurrency",
            "Concurrent requests at the interceptor proxy",
            labels=["route_name", "route_namespace"])
        for key, c in self._counter.as_json_dict().items():
            ns, _, name = key.partition("/")
            family.add_metric([name, ns], c["Concurrency"])
        yield family


class ProxyMetrics:
    """Per-request instruments; C{observe} is called once per request."""

    def __init__(self, clock, counter: QueueCounter, registry: CollectorRegistry = None):
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["code", "method", "route_name", "route_namespace"]
        self.requests = Counter("interceptor_request_count",
                                "Total requests processed by the interceptor proxy",
                                labels, registry=self.registry)
        self.duration = Histogram("interceptor_request_duration_seconds",
                                  "Time from request received to response written",
                                  labels, buckets=BUCKETS, registry=self.registry)
        self.registry.register(_ConcurrencyCollector(counter))
        #: label children by (code, method, route), saving the label lookups
        self._children = {}

    def record(self, request, started: float, route) -> None:
        """Count one finished (or abandoned) request."""
        key = (request.code, request.method, route)
        children = self._children.get(key)
        if children is None:
            method = request.method.decode("latin-1")
            if method not in _STANDARD_METHODS:
                method = "_OTHER"
            labels = (str(request.code), method,
                      route.name if route is not None else "",
                      route.namespace if route is not None else "")
            children = (self.requests.labels(*labels), self.duration.labels(*labels))
            if len(self._children) < 10_000:
                self._children[key] = children
        children[0].inc()
        children[1].observe(max(0.0, self.clock.seconds() - started))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """``/metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: ProxyMetrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.render()
