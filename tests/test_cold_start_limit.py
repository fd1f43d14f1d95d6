"""
The cold-start pending limit (v0.16): ``KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS``
and an InterceptorRoute's ``coldStart.maxPendingRequests`` / ``overflow``,
driven through the real Site and pipeline on the in-memory harness.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from keda_proxy.ops._metrics import ProxyMetrics
from keda_proxy.state._model import OVERFLOW_PLACEHOLDER, StaticResponse, Timeouts
from keda_proxy.steps import ProxySettings
from tests.builders import endpoint_slice, load, route, service
from tests.proxyfakes import OK_5, Harness, response_body, response_headers, status_line

PLACEHOLDER = StaticResponse(body="warming up", headers=(("Refresh", "2"),))


def cold(h, *routes):
    """The routes' Service known, with no endpoint at all."""
    load(h.store, routes=routes or [route()], services=[service()], slices=[])


def warm_up(h, *routes):
    load(h.store, routes=routes or [route()], services=[service()],
         slices=[endpoint_slice()])


def harness(limit=0, **kw):
    h = Harness(settings=ProxySettings(cold_start_max_pending_requests=limit, **kw))
    h.pipeline.metrics = ProxyMetrics(h.clock, h.counter)
    return h


def held(t) -> bool:
    return t.value() == b""


def is_rejected(t) -> bool:
    return (status_line(t) == b"HTTP/1.1 503 Service Unavailable"
            and response_body(t) == b"too many pending requests\n")


def rejections(h) -> dict:
    text = h.pipeline.metrics.render().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "interceptor_cold_start_rejections_total":
                out[(s.labels["route_namespace"], s.labels["route_name"])] = s.value
    return out


# -- Reject -------------------------------------------------------------------

def test_past_the_global_limit_a_cold_request_gets_gos_503_body():
    h = harness(limit=2)
    cold(h)
    clients = [h.get()[1] for _ in range(3)]
    assert [held(t) for t in clients] == [True, True, False]
    t = clients[2]
    assert is_rejected(t)
    fields = response_headers(t)
    assert fields[b"content-type"] == [b"text/plain; charset=utf-8"]
    assert fields[b"x-content-type-options"] == [b"nosniff"]
    assert fields[b"content-length"] == [b"26"]
    assert b"x-keda-http-cold-start" not in fields  # it never waited
    assert h.dials == []
    assert h.gate.waiting("default/web") == 2


def test_a_rejected_request_is_counted_in_queue_as_go_counts_it():
    h = harness(limit=1)
    cold(h)
    h.get()
    _, t = h.get()
    assert is_rejected(t)
    # counted in, then out once its 503 was written: RequestCount keeps it
    assert h.counter.as_json_dict() == {"default/web": {"Concurrency": 1, "RequestCount": 2}}


def test_no_limit_by_default():
    h = harness()
    cold(h)
    clients = [h.get()[1] for _ in range(50)]
    assert all(held(t) for t in clients)
    assert h.gate.waiting("default/web") == 50
    assert rejections(h) == {}


def test_warm_traffic_is_never_limited():
    h = harness(limit=1)
    warm_up(h, route(max_pending_requests=1))
    clients = [h.get()[1] for _ in range(5)]
    assert len(h.dials) == 5
    for i, t in enumerate(clients):
        h.upstream(i).respond(OK_5)
        assert status_line(t) == b"HTTP/1.1 200 OK"
    assert rejections(h) == {}


def test_the_route_limit_wins_over_the_global_one_both_ways():
    h = harness(limit=1)
    cold(h, route(name="roomy", hosts=["roomy.example"], max_pending_requests=3),
         route(name="plain", hosts=["plain.example"]))
    roomy = [h.get(host=b"roomy.example")[1] for _ in range(4)]
    plain = [h.get(host=b"plain.example")[1] for _ in range(2)]
    assert [held(t) for t in roomy] == [True, True, True, False]
    assert [held(t) for t in plain] == [True, False]
    assert is_rejected(roomy[3]) and is_rejected(plain[1])


def test_a_route_limit_applies_with_no_global_one():
    h = harness(limit=0)
    cold(h, route(max_pending_requests=1))
    _, first = h.get()
    _, second = h.get()
    assert held(first) and is_rejected(second)


def test_the_limit_is_per_route_even_for_routes_sharing_a_service():
    h = harness(limit=1)
    cold(h, route(name="a", hosts=["a.example"]), route(name="b", hosts=["b.example"]))
    _, a1 = h.get(host=b"a.example")
    _, b1 = h.get(host=b"b.example")
    _, a2 = h.get(host=b"a.example")
    assert held(a1) and held(b1) and is_rejected(a2)
    assert h.gate.waiting("default/web") == 2


# -- the limit frees as held requests leave -----------------------------------

def test_released_requests_free_the_limit():
    h = harness(limit=1)
    cold(h)
    _, first = h.get()
    assert is_rejected(h.get()[1])
    warm_up(h)  # the pod is ready: the held request is released
    h.clock.advance(0)
    h.upstream().respond(OK_5)
    assert status_line(first) == b"HTTP/1.1 200 OK"
    cold(h)  # scaled to zero again: a new cold start may hold one again
    _, again = h.get()
    assert held(again)
    assert is_rejected(h.get()[1])


def test_timed_out_requests_free_the_limit():
    h = harness(limit=1)
    cold(h, route(timeouts=Timeouts(readiness=5)))
    _, first = h.get()
    assert is_rejected(h.get()[1])
    h.clock.advance(5)
    assert status_line(first) == b"HTTP/1.1 504 Gateway Timeout"
    _, again = h.get()
    assert held(again)


def test_a_client_that_goes_away_frees_the_limit():
    h = harness(limit=1)
    cold(h)
    proto, first = h.get()
    assert is_rejected(h.get()[1])
    proto.connectionLost(Failure(ConnectionLost()))
    assert h.gate.waiting("default/web") == 0
    _, again = h.get()
    assert held(again)


# -- Placeholder --------------------------------------------------------------

def test_overflow_placeholder_holds_up_to_the_limit_and_serves_the_rest_the_placeholder():
    h = harness()
    cold(h, route(placeholder=PLACEHOLDER, max_pending_requests=2,
                  overflow=OVERFLOW_PLACEHOLDER))
    clients = [h.get()[1] for _ in range(3)]
    assert [held(t) for t in clients] == [True, True, False]
    over = clients[2]
    assert status_line(over) == b"HTTP/1.1 503 Service Unavailable"
    assert response_body(over) == b"warming up"
    assert response_headers(over)[b"refresh"] == [b"2"]
    assert rejections(h) == {("default", "web"): 1}  # Go counts these too
    warm_up(h, route(placeholder=PLACEHOLDER, max_pending_requests=2,
                     overflow=OVERFLOW_PLACEHOLDER))
    h.clock.advance(0)
    assert len(h.dials) == 2  # the held two go upstream


def test_a_placeholder_without_an_explicit_limit_answers_at_once_whatever_the_global_one():
    h = harness(limit=5)
    cold(h, route(placeholder=PLACEHOLDER, overflow=OVERFLOW_PLACEHOLDER))
    _, t = h.get()
    assert response_body(t) == b"warming up"
    assert h.gate.waiting() == 0


def test_a_placeholder_with_a_limit_but_overflow_reject_answers_at_once():
    h = harness()
    cold(h, route(placeholder=PLACEHOLDER, max_pending_requests=5))
    _, t = h.get()
    assert response_body(t) == b"warming up"
    assert h.gate.waiting() == 0
    assert rejections(h) == {}


def test_overflow_placeholder_without_a_placeholder_rejects_as_go_does():
    # validation refuses this InterceptorRoute; a route built another way
    # (a plugin, say) still gets Go's behaviour
    h = harness()
    cold(h, route(max_pending_requests=1, overflow=OVERFLOW_PLACEHOLDER))
    h.get()
    assert is_rejected(h.get()[1])


# -- the counter --------------------------------------------------------------

def test_rejections_are_counted_per_route():
    h = harness(limit=1)
    cold(h, route(name="a", hosts=["a.example"]), route(name="b", hosts=["b.example"]))
    for _ in range(3):
        h.get(host=b"a.example")
    h.get(host=b"b.example")
    h.get(host=b"b.example")
    assert rejections(h) == {("default", "a"): 2, ("default", "b"): 1}
    text = h.pipeline.metrics.render().decode()
    assert ('interceptor_cold_start_rejections_total{route_name="a",route_namespace="default"}'
            ' 2.0') in text


# -- wiring -------------------------------------------------------------------

def test_the_variable_reaches_the_pipeline():
    from keda_proxy._app import settings_from_config
    from keda_proxy.ops._config import load_config

    config = load_config({"KEDA_HTTP_PROXY_PORT": "1", "KEDA_HTTP_ADMIN_PORT": "2",
                          "KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": "7"})
    assert settings_from_config(config).cold_start_max_pending_requests == 7
