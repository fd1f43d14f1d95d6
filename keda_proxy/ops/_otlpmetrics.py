"""
OTLP metrics push (``OTEL_EXPORTER_OTLP_METRICS_ENABLED``): the same
instruments ``/metrics`` serves, pushed every
``OTEL_METRIC_EXPORT_INTERVAL`` milliseconds (60 s by default) with the
SDK's OTLP exporter, which reads the standard ``OTEL_EXPORTER_OTLP_*``
variables.

The Prometheus registry stays the one source of the figures: a push
collects it on the reactor thread (where the counters live, so it reads
them consistently), and converts and sends the result from the push
thread, so a slow or absent collector never holds up the reactor.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Optional

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

log = Logger()


def exporter_for(protocol: Optional[str] = None):
    """The SDK's metric exporter for C{protocol}
    (C{OTEL_EXPORTER_OTLP_METRICS_PROTOCOL}, else
    C{OTEL_EXPORTER_OTLP_PROTOCOL}, else ``http/protobuf`` as the
    OpenTelemetry specification recommends)."""
    protocol = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter()


def to_metrics_data(families: Iterable, resource, start_ns: int, now_ns: int):
    """Prometheus metric families as the SDK's C{MetricsData}: counters as
    cumulative monotonic sums, gauges as gauges, histograms with their
    bucket bounds."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    cumulative = AggregationTemporality.CUMULATIVE
    metrics = []
    for family in families:
        if family.type == "histogram":
            series = {}
            for s in family.samples:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                entry = series.setdefault(labels, {"buckets": [], "count": 0, "sum": 0.0})
                if s.name.endswith("_bucket"):
                    entry["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    entry["count"] = int(s.value)
                elif s.name.endswith("_sum"):
                    entry["sum"] = s.value
            points = []
            for labels, entry in series.items():
                buckets = sorted(entry["buckets"])
                bounds = [le for le, _ in buckets if le != float("inf")]
                counts, below = [], 0.0
                for _, cumulative_count in buckets:
                    counts.append(int(cumulative_count - below))
                    below = cumulative_count
                points.append(HistogramDataPoint(
                    attributes=dict(labels), start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns, count=entry["count"], sum=entry["sum"],
                    bucket_counts=counts, explicit_bounds=bounds,
                    min=float("nan"), max=float("nan")))
            data = Histogram(data_points=points, aggregation_temporality=cumulative)
        else:
            points = [NumberDataPoint(attributes=dict(s.labels), start_time_unix_nano=start_ns,
                                      time_unix_nano=now_ns, value=s.value)
                      for s in family.samples
                      if not s.name.endswith("_created")]
            if family.type == "counter":
                data = Sum(data_points=points, aggregation_temporality=cumulative,
                           is_monotonic=True)
            else:
                data = Gauge(data_points=points)
        if not points:
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        metrics.append(Metric(name=name, description=family.documentation, unit=None,
                              data=data))
    scope = ScopeMetrics(scope=InstrumentationScope("keda_proxy"), metrics=metrics,
                         schema_url="")
    return MetricsData(resource_metrics=[
        ResourceMetrics(resource=resource, scope_metrics=[scope], schema_url="")])


@define(slots=False, eq=False)
class MetricsPusher(Service):
    """Pushes a Prometheus registry over OTLP from a daemon thread."""

    registry: object
    exporter: object
    reactor: object
    interval: float = field(
        factory=lambda: float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000)
    _stop: threading.Event = field(factory=threading.Event, init=False)

    def startService(self):
        super().startService()
        from keda_proxy.ops._tracing import resource

        self._resource = resource()
        self._start_ns = time.time_ns()
        self._stop.clear()
        threading.Thread(target=self._run, name="otlp-metrics", daemon=True).start()

    def stopService(self):
        self._stop.set()
        return super().stopService()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def push(self) -> None:
        """Collect on the reactor, convert and export here (push thread)."""
        try:
            families = blockingCallFromThread(self.reactor, lambda: list(self.registry.collect()))
            data = to_metrics_data(families, self._resource, self._start_ns, time.time_ns())
            self.exporter.export(data)
        except Exception as e:  # noqa: BLE001 - the next push tries again
            self.reactor.callFromThread(log.warn, "metrics push failed: {error}", error=str(e))


__all__ = ["MetricsPusher", "exporter_for", "to_metrics_data"]
