"""
Cold-start metrics, read from the real Prometheus text of the metrics
resource: cold starts per route, the time requests are held, fallbacks.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from keda_proxy.ops._metrics import WAIT_BUCKETS, MetricsResource, ProxyMetrics
from keda_proxy.state._model import ServiceRef, Timeouts
from keda_proxy.steps import ProxySettings
from tests.builders import endpoint_slice, load, route, service
from tests.proxyfakes import OK_5, Harness, status_line

WEB = (("route_name", "web"), ("route_namespace", "default"))


def harness(**settings):
    h = Harness(settings=ProxySettings(**settings))
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)
    return h


def cold(h, *routes):
    load(h.store, routes=routes or [route()],
         services=[service(), service(name="spare")], slices=[])


def warm_up(h, *routes):
    load(h.store, routes=routes or [route()],
         services=[service(), service(name="spare")], slices=[endpoint_slice()])


def scrape(h) -> dict:
    """{sample name: {sorted labels: value}}, from what /metrics serves."""
    request = DummyRequest([b""])
    text = MetricsResource(h.pipeline.metrics).render_GET(request).decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(h, name, labels=WEB, **extra):
    key = tuple(sorted(dict(labels, **extra).items()))
    return scrape(h).get(name, {}).get(key)


def buckets(h) -> dict:
    return {dict(k)["le"]: v for k, v in
            scrape(h)["interceptor_cold_start_wait_seconds_bucket"].items()
            if ("route_name", "web") in k}


# -- cold starts ---------------------------------------------------------------

def test_a_cold_start_is_counted_once_however_many_requests_it_holds():
    h = harness()
    cold(h)
    for _ in range(3):
        h.get()
    assert value(h, "interceptor_cold_starts_total") == 1
    warm_up(h)
    h.clock.advance(0)
    for i in range(3):
        h.upstream(i).respond(OK_5)
    h.get()  # warm: not a cold start
    assert value(h, "interceptor_cold_starts_total") == 1
    cold(h)  # scaled to zero again
    h.get()
    assert value(h, "interceptor_cold_starts_total") == 2


def test_cold_starts_are_counted_per_route():
    h = harness()
    cold(h, route(name="a", hosts=["a.example"]), route(name="b", hosts=["b.example"]))
    h.get(host=b"a.example")
    h.get(host=b"a.example")
    h.get(host=b"b.example")
    families = scrape(h)["interceptor_cold_starts_total"]
    assert families == {(("route_name", "a"), ("route_namespace", "default")): 1,
                        (("route_name", "b"), ("route_namespace", "default")): 1}


def test_no_cold_start_for_warm_traffic_or_requests_refused_at_the_limit():
    h = harness(cold_start_max_pending_requests=1)
    warm_up(h)
    h.get()
    assert "interceptor_cold_starts_total" not in scrape(h)
    cold(h)
    h.get()
    h.get()  # refused: neither a cold start nor a wait
    assert value(h, "interceptor_cold_starts_total") == 1
    assert value(h, "interceptor_cold_start_rejections_total") == 1
    assert value(h, "interceptor_cold_start_wait_seconds_count") is None


# -- time held -------------------------------------------------------------------

def test_the_time_each_request_was_held_is_observed_when_it_is_released():
    h = harness()
    cold(h)
    h.get()
    h.clock.advance(2)
    h.get()
    h.clock.advance(1.5)
    assert value(h, "interceptor_cold_start_wait_seconds_count") is None  # still held
    warm_up(h)
    h.clock.advance(0)
    assert value(h, "interceptor_cold_start_wait_seconds_count") == 2
    assert value(h, "interceptor_cold_start_wait_seconds_sum") == 5.0  # 3.5 + 1.5
    b = buckets(h)
    assert (b["1.0"], b["2.5"], b["5.0"], b["+Inf"]) == (0, 1, 2, 2)
    assert list(b) == [repr(float(x)) for x in WAIT_BUCKETS] + ["+Inf"]


def test_timed_out_and_abandoned_holds_are_observed_too():
    h = harness()
    cold(h, route(timeouts=Timeouts(readiness=30)))
    _, timed_out = h.get()
    proto, _ = h.get()
    h.clock.advance(12)
    proto.connectionLost(Failure(ConnectionLost()))  # the client gave up after 12 s
    h.clock.advance(18)
    assert status_line(timed_out) == b"HTTP/1.1 504 Gateway Timeout"
    assert value(h, "interceptor_cold_start_wait_seconds_count") == 2
    assert value(h, "interceptor_cold_start_wait_seconds_sum") == 42.0  # 30 + 12
    b = buckets(h)
    assert (b["10.0"], b["15.0"], b["30.0"]) == (0, 1, 2)


def test_a_request_is_observed_once_even_if_it_leaves_after_being_woken():
    h = harness()
    cold(h)
    clients = [h.get()[0] for _ in range(h.gate.batch + 1)]
    h.clock.advance(1)
    warm_up(h)  # the first batch is released now, the last one next turn
    clients[-1].connectionLost(Failure(ConnectionLost()))
    h.clock.advance(0)
    assert value(h, "interceptor_cold_start_wait_seconds_count") == h.gate.batch + 1


# -- fallbacks -------------------------------------------------------------------

def test_fallbacks_taken_are_counted():
    h = harness()
    fb = route(fallback=ServiceRef(name="spare", port_name="http"),
               timeouts=Timeouts(readiness=3))
    cold(h, fb)
    h.get()
    h.get()
    h.clock.advance(3)
    assert [d.key[1] for d in h.dials] == ["spare.default", "spare.default"]
    assert value(h, "interceptor_cold_start_fallbacks_total") == 2


def test_a_timeout_without_a_fallback_is_not_a_fallback():
    h = harness()
    cold(h, route(timeouts=Timeouts(readiness=3)))
    _, t = h.get()
    h.clock.advance(3)
    assert status_line(t) == b"HTTP/1.1 504 Gateway Timeout"
    assert "interceptor_cold_start_fallbacks_total" not in scrape(h)


def test_the_request_deadline_while_held_is_not_a_fallback():
    h = harness()
    cold(h, route(fallback=ServiceRef(name="spare", port_name="http"),
                  timeouts=Timeouts(readiness=5, request=2)))
    _, t = h.get()
    h.clock.advance(2)
    assert status_line(t) == b"HTTP/1.1 504 Gateway Timeout"
    assert h.dials == []
    assert "interceptor_cold_start_fallbacks_total" not in scrape(h)
