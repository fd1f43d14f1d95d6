"""
Prometheus metrics with the names the Go interceptor's OpenTelemetry
exporter produces, served on ``OTEL_PROM_EXPORTER_PORT``.

 - ``interceptor_request_count_total{code,method,route_name,route_namespace}``
 - ``interceptor_request_duration_seconds`` (histogram, same labels)
 - ``interceptor_request_concurrency{route_name,route_namespace}``
 - ``interceptor_cold_start_rejections_total{route_name,route_namespace}``:
   requests refused (503, or the placeholder) past the cold-start pending limit

and, where Go has no metric, under names of the same family and labels:

 - ``interceptor_cold_starts_total{route_name,route_namespace}``: times a
   route began holding requests for a ready endpoint, none being held
 - ``interceptor_cold_start_wait_seconds{route_name,route_namespace}``
   (histogram): how long each held request was held
 - ``interceptor_cold_start_fallbacks_total{route_name,route_namespace}``:
   held requests sent to the fallback Service after the readiness timeout

Concurrency is read from the queue counter at scrape time rather than
kept twice on the request path.

``/metrics`` (L{metrics_root}, the only path the metrics port answers; any
other is Go's ``404 page not found``) also serves what Go's
``promhttp.Handler()`` adds around the OTel exporter's instruments, none of
which L{ProxyMetrics.registry} holds (so an OTLP push of that registry
carries the instruments alone, as Go's does):

 - ``target_info``: the OTel resource, as the exporter writes it: the
   attributes of ``OTEL_RESOURCE_ATTRIBUTES`` and Go's ``service.name``
   (``keda-http-interceptor``) and ``service.version``, which win, with
   the names escaped to label names (``service.name`` -> ``service_name``);
 - the ``process_*`` series of client_golang's process collector;
 - ``promhttp_metric_handler_requests_total{code}`` and
   ``promhttp_metric_handler_requests_in_flight``, which count scrapes;
 - in the place of Go's ``go_*`` runtime series, Python's: ``python_info``
   and ``python_gc_*``.
"""

from __future__ import annotations

import os
import re
import resource as _rlimits
from bisect import bisect_left
from importlib import metadata
from urllib.parse import unquote

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource

from keda_proxy.steps._counting import QueueCounter

_STANDARD_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})

# The OTel exporter has no *_created series; keep the output the same.
disable_created_metrics()

#: The OTel HTTP semantic-convention buckets Go uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
#: Buckets for the time a request is held: a scale-from-zero takes seconds
#: to minutes, well past BUCKETS' 10 s.
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)


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


class _RouteCounter:
    """A counter per route, for events off the request path's common case:
    a plain dict of numbers, turned into a family when scraped.  A route's
    series appears with its first event, as with Go's OTel counters."""

    def __init__(self, name: str, documentation: str):
        self.name = name
        self.documentation = documentation
        #: (route name, route namespace) -> count
        self.counts = {}

    def inc(self, route) -> None:
        key = (route.name, route.namespace)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation,
                                     labels=["route_name", "route_namespace"])
        for labels, n in self.counts.items():
            family.add_metric(list(labels), n)
        yield family


class _RouteHistogram:
    """A histogram per route, for the cold path: per route a count, a sum
    and one number per bucket, made cumulative when scraped."""

    def __init__(self, name: str, documentation: str, buckets):
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(buckets)
        #: (route name, route namespace) -> [count, sum, per-bucket counts]
        self.cells = {}

    def observe(self, route, value: float) -> None:
        key = (route.name, route.namespace)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0, 0.0, [0] * (len(self.bounds) + 1)]
        if value < 0:
            value = 0.0
        cell[0] += 1
        cell[1] += value
        cell[2][bisect_left(self.bounds, value)] += 1

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=["route_name", "route_namespace"], unit="")
        for labels, (_, total, counts) in self.cells.items():
            cumulative, buckets = 0, []
            for bound, n in zip(self.bounds + (float("inf"),), counts, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            family.add_metric(list(labels), buckets, total)
        yield family


class _Cell:
    """One label set's counters: plain numbers, updated on the reactor
    thread; read at scrape time (also on the reactor thread)."""

    __slots__ = ("count", "total", "buckets")

    def __init__(self):
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf


class ProxyMetrics:
    """Per-request instruments.  C{record} is called once per request and
    only does arithmetic; the Prometheus families are built when scraped."""

    def __init__(self, clock, counter: QueueCounter, registry: CollectorRegistry = None):
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        #: label values -> _Cell: the series
        self._series = {}
        #: (code, method, route) -> _Cell, a cache in front of _series that
        #: saves building the label values on every request
        self._by_key = {}
        self.registry.register(_RequestCollector(self))
        self.registry.register(_ConcurrencyCollector(counter))
        self._rejections = _RouteCounter(
            "interceptor_cold_start_rejections",
            "Requests rejected because the cold-start pending request limit was reached")
        self.registry.register(self._rejections)
        self._cold_starts = _RouteCounter(
            "interceptor_cold_starts",
            "Cold starts: times a route began holding requests for a ready endpoint "
            "of its target, none of its requests being held")
        self.registry.register(self._cold_starts)
        self._waits = _RouteHistogram(
            "interceptor_cold_start_wait_seconds",
            "Time a request was held waiting for a ready endpoint, until released, "
            "timed out or abandoned", WAIT_BUCKETS)
        self.registry.register(self._waits)
        self._fallbacks = _RouteCounter(
            "interceptor_cold_start_fallbacks",
            "Held requests sent to the fallback Service after the readiness timeout")
        self.registry.register(self._fallbacks)

    def cold_start_rejected(self, route) -> None:
        """A request of C{route} was refused past its pending limit."""
        self._rejections.inc(route)

    def cold_start_began(self, route) -> None:
        """C{route} holds a request, and held none before it."""
        self._cold_starts.inc(route)

    def cold_start_waited(self, route, seconds: float) -> None:
        """A request of C{route} stopped being held after C{seconds}."""
        self._waits.observe(route, seconds)

    def cold_start_fell_back(self, route) -> None:
        """A held request of C{route} went to its fallback Service."""
        self._fallbacks.inc(route)

    def record(self, request, started: float, route) -> None:
        """Count one finished (or abandoned) request."""
        key = (request.code, request.method, route)
        cell = self._by_key.get(key)
        if cell is None:
            method = request.method.decode("latin-1")
            if method not in _STANDARD_METHODS:
                method = "_OTHER"
            labels = (str(request.code), method,
                      route.name if route is not None else "",
                      route.namespace if route is not None else "")
            cell = self._series.get(labels)
            if cell is None:
                cell = self._series[labels] = _Cell()
            if len(self._by_key) > 10_000:  # route objects replaced by reloads
                self._by_key.clear()
            self._by_key[key] = cell
        seconds = self.clock.seconds() - started
        if seconds < 0:
            seconds = 0.0
        cell.count += 1
        cell.total += seconds
        cell.buckets[bisect_left(BUCKETS, seconds)] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector:
    def __init__(self, metrics: ProxyMetrics):
        self._metrics = metrics

    def collect(self):
        labels = ["code", "method", "route_name", "route_namespace"]
        count = CounterMetricFamily("interceptor_request_count",
                                    "Total requests processed by the interceptor proxy",
                                    labels=labels)
        duration = HistogramMetricFamily(
            "interceptor_request_duration_seconds",
            "Time from request received to response written", labels=labels, unit="")
        for values, cell in self._metrics._series.items():
            count.add_metric(list(values), cell.count)
            cumulative, buckets = 0, []
            for bound, n in zip(BUCKETS + (float("inf"),), cell.buckets, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            duration.add_metric(list(values), buckets, cell.total)
        yield count
        yield duration


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


#: The service name Go's interceptor gives its metrics' resource.
SERVICE_NAME = "keda-http-interceptor"

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def service_version() -> str:
    """This build's version (Go's C{build.Version()}; ``HEAD`` when not
    installed)."""
    try:
        return metadata.version("keda-interceptor")
    except metadata.PackageNotFoundError:
        return "HEAD"


def resource_attributes(environ=None) -> dict:
    """The resource of Go's meter provider: the OpenTelemetry SDK reads
    C{OTEL_RESOURCE_ATTRIBUTES} (``key=value`` pairs separated by commas,
    each trimmed, the value %-decoded; a pair without ``=`` is skipped, a
    later key wins), then the interceptor's own ``service.name`` and
    ``service.version`` win over it.  (C{OTEL_SERVICE_NAME} would set
    ``service.name``, which the interceptor's own then replaces.)"""
    environ = os.environ if environ is None else environ
    attributes = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().split(","):
        key, found, value = pair.partition("=")
        key = key.strip()
        if not found or not key:
            continue
        text = value.strip()
        # Go's url.PathUnescape: a stray % keeps the value as written
        attributes[key] = value if _BAD_ESCAPE.search(text) else unquote(text)
    attributes["service.name"] = SERVICE_NAME
    attributes["service.version"] = service_version()
    return attributes


def label_name(key: str) -> str:
    """An attribute key as the OTel Prometheus exporter names its label
    (otlptranslator's escaping): every character but letters, digits and
    ``_`` becomes ``_``; a leading digit gets ``key_`` before it, a single
    leading ``_`` gets ``key``."""
    name = _NOT_LABEL_CHAR.sub("_", key)
    if name[:1].isdigit():
        name = "key_" + name
    elif name.startswith("_") and not name.startswith("__"):
        name = "key" + name
    return name


class _TargetInfoCollector:
    """``target_info``, the resource as one series of value 1.  Keys that
    escape to the same label name have their values sorted and joined
    with ``;``, as the exporter does."""

    def __init__(self, attributes: dict):
        merged = {}
        for key, value in attributes.items():
            name = label_name(key)
            if name.strip("_"):
                merged.setdefault(name, []).append(value)
        self.labels = {name: ";".join(sorted(values)) for name, values in merged.items()}

    def collect(self):
        names = sorted(self.labels)
        family = GaugeMetricFamily("target_info", "Target metadata", labels=names)
        family.add_metric([self.labels[n] for n in names], 1)
        yield family


#: RLIM_INFINITY as client_golang's procfs reads it (the largest uint64)
_UNLIMITED = float(2**64 - 1)


class _ProcessExtrasCollector:
    """The series of Go's process collector that prometheus_client's lacks:
    the address-space limit and the network namespace's traffic."""

    def __init__(self, proc: str = "/proc/self"):
        self.proc = proc

    def collect(self):
        if not os.path.isdir(self.proc):
            return
        limit = _rlimits.getrlimit(_rlimits.RLIMIT_AS)[0]
        yield GaugeMetricFamily(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            value=_UNLIMITED if limit == _rlimits.RLIM_INFINITY else float(limit))
        try:
            received, sent = _network_bytes(os.path.join(self.proc, "net", "dev"))
        except (OSError, ValueError, IndexError):
            return
        yield CounterMetricFamily(
            "process_network_receive_bytes",
            "Number of bytes received by the process over the network.", value=received)
        yield CounterMetricFamily(
            "process_network_transmit_bytes",
            "Number of bytes sent by the process over the network.", value=sent)


def _network_bytes(path: str) -> tuple:
    """(received, sent) bytes over every interface of /proc/<pid>/net/dev."""
    received = sent = 0
    with open(path, "rb") as f:
        for line in f.read().splitlines()[2:]:
            _, _, counters = line.partition(b":")
            fields = counters.split()
            received += int(fields[0])
            sent += int(fields[8])
    return received, sent


class _ScrapeCollector:
    """promhttp's own counters of the scrapes it served."""

    def __init__(self):
        self.in_flight = 0
        #: status code -> scrapes answered with it (Go starts all three at 0)
        self.by_code = {"200": 0, "500": 0, "503": 0}

    def collect(self):
        family = CounterMetricFamily("promhttp_metric_handler_requests",
                                     "Total number of scrapes by HTTP status code.",
                                     labels=["code"])
        for code, n in self.by_code.items():
            family.add_metric([code], n)
        yield family
        yield GaugeMetricFamily("promhttp_metric_handler_requests_in_flight",
                                "Current number of scrapes being served.", value=self.in_flight)


class ExpositionExtras:
    """The series ``/metrics`` serves besides the instruments, in their own
    registry: the resource, the process and the scrapes."""

    def __init__(self, environ=None, proc: str = "/proc"):
        self.registry = CollectorRegistry()
        self.registry.register(_TargetInfoCollector(resource_attributes(environ)))
        ProcessCollector(proc=proc, registry=self.registry)
        self.registry.register(_ProcessExtrasCollector(os.path.join(proc, "self")))
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.scrapes = _ScrapeCollector()
        self.registry.register(self.scrapes)


class MetricsResource(Resource):
    """``/metrics`` in the Prometheus text format: the instruments, then
    L{ExpositionExtras}."""

    isLeaf = True

    def __init__(self, metrics: ProxyMetrics, extras: ExpositionExtras = None):
        super().__init__()
        self.metrics = metrics
        self.extras = extras if extras is not None else ExpositionExtras()

    def render_GET(self, request):
        scrapes = self.extras.scrapes
        scrapes.in_flight += 1
        try:
            body = self.metrics.render() + generate_latest(self.extras.registry)
        except Exception as e:  # noqa: BLE001 - promhttp answers 500 and counts it
            scrapes.by_code["500"] += 1
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"An error has occurred while serving metrics:\n\n{e}\n".encode()
        finally:
            scrapes.in_flight -= 1
        scrapes.by_code["200"] += 1
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body


def plain_text(request, code: int = 200) -> None:
    """The status and headers of Go's plain-text answers (C{http.Error},
    C{http.NotFound}, the pprof text pages)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")


class NotFound(Resource):
    """Go's ``http.NotFound`` (or another 404 C{body})."""

    isLeaf = True

    def __init__(self, body: bytes = b"404 page not found\n"):
        super().__init__()
        self.body = body

    def render(self, request):
        plain_text(request, 404)
        return self.body


class _MetricsRoot(Resource):
    """Only ``/metrics`` (any query) answers, as with Go's ``ServeMux``
    holding the one pattern ``/metrics``; any other path is a 404."""

    def __init__(self, metrics_resource: MetricsResource):
        super().__init__()
        self.metrics_resource = metrics_resource
        self.not_found = NotFound()

    def getChild(self, path, request):
        if path == b"metrics" and not request.postpath:
            return self.metrics_resource
        return self.not_found

    def render(self, request):
        return self.not_found.render(request)


def metrics_root(metrics: ProxyMetrics, extras: ExpositionExtras = None) -> Resource:
    """The metrics port's root resource."""
    return _MetricsRoot(MetricsResource(metrics, extras))
