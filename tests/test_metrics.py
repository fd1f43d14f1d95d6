"""Tests for keda_proxy.ops._metrics: real Prometheus text, Go's metric names."""

from prometheus_client.parser import text_string_to_metric_families

from keda_proxy.ops._metrics import ProxyMetrics
from tests.builders import endpoint_slice, load, route, service
from tests.proxyfakes import OK_5, Harness


def scrape(metrics):
    text = metrics.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(family, name):
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


def harness():
    h = Harness()
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)
    load(h.store, routes=[route()], services=[service()], slices=[endpoint_slice()])
    return h


def test_requests_are_counted_by_code_method_and_route():
    h = harness()
    h.get()
    up = h.upstream()
    up.respond(OK_5)
    h.get()  # on the pooled connection
    up.respond(OK_5)
    h.get(host=b"nowhere.example")
    h.send(b"BREW / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
    families, text = scrape(h.pipeline.metrics)
    counts = samples(families["interceptor_request_count"], "interceptor_request_count_total")
    key = lambda code, method, name, ns: tuple(sorted(  # noqa: E731
        {"code": code, "method": method, "route_name": name, "route_namespace": ns}.items()))
    assert counts[key("200", "GET", "web", "default")] == 2
    assert counts[key("404", "GET", "", "")] == 1
    assert counts[key("404", "_OTHER", "", "")] == 1
    assert "_created" not in text


def test_duration_histogram_buckets_are_cumulative_and_sum_up():
    h = harness()
    h.get()
    up = h.upstream()
    h.clock.advance(0.3)
    up.respond(OK_5)
    h.get()
    h.clock.advance(0.004)
    up.respond(OK_5)
    families, _ = scrape(h.pipeline.metrics)
    fam = families["interceptor_request_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1
    assert buckets["0.25"] == 1
    assert buckets["0.5"] == 2
    assert buckets["+Inf"] == 2
    total = [s.value for s in fam.samples if s.name.endswith("_sum")][0]
    assert abs(total - 0.304) < 1e-9
    count = [s.value for s in fam.samples if s.name.endswith("_count")][0]
    assert count == 2


def test_concurrency_gauge_follows_requests_in_flight():
    h = harness()
    h.get()
    families, _ = scrape(h.pipeline.metrics)
    gauge = samples(families["interceptor_request_concurrency"], "interceptor_request_concurrency")
    assert gauge[(("route_name", "web"), ("route_namespace", "default"))] == 1
    h.upstream().respond(OK_5)
    families, _ = scrape(h.pipeline.metrics)
    gauge = samples(families["interceptor_request_concurrency"], "interceptor_request_concurrency")
    assert gauge[(("route_name", "web"), ("route_namespace", "default"))] == 0


def test_a_reloaded_route_keeps_counting_into_the_same_series():
    h = harness()
    h.get()
    up = h.upstream()
    up.respond(OK_5)
    before = h.store.current.routes["default/web"]
    load(h.store, routes=[route()], services=[service()], slices=[endpoint_slice()])
    assert h.store.current.routes["default/web"] is not before  # a new, equal object
    h.get()
    up.respond(OK_5)
    families, _ = scrape(h.pipeline.metrics)
    counts = samples(families["interceptor_request_count"], "interceptor_request_count_total")
    web = [v for k, v in counts.items() if ("route_name", "web") in k]
    assert web == [2]
