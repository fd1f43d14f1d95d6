"""
Unit tests for the request pipeline (keda_proxy.proxy), driven through the
real Site over StringTransport with a fake upstream agent and a
MemoryReactorClock.
"""

import attrs
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.interfaces import IRoutingPlugin
from keda_proxy.model import (
    MODE_ALWAYS,
    ConfigMapKeyRef,
    HeaderMatch,
    RoutingRule,
    ServiceRef,
    StaticResponse,
    StaticRoute,
    Timeouts,
)
from keda_proxy.proxy import ProxySettings, join_host_port
from tests.builders import configmap, endpoint_slice, load, route, service
from tests.proxyfakes import Harness, response_body, response_headers, status_line


def warm(h, *routes, slices=None, **kw):
    load(h.store, routes=routes or [route()], services=[service()],
         slices=[endpoint_slice()] if slices is None else slices, **kw)


# -- routing and malformed requests -------------------------------------------

def test_no_route_is_404_with_go_style_body():
    h = Harness()
    warm(h)
    _, t = h.get(host=b"nowhere.example")
    assert status_line(t) == b"HTTP/1.1 404 Not Found"
    assert response_body(t) == b"Not Found\n"
    assert response_headers(t).getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
    assert h.agent.requests == []


def test_http11_without_host_is_400():
    h = Harness()
    warm(h)
    _, t = h.send(b"GET / HTTP/1.1\r\n\r\n")
    assert status_line(t) == b"HTTP/1.1 400 Bad Request"


def test_connect_is_refused_and_never_dialled():
    h = Harness()
    warm(h)
    _, t = h.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert status_line(t) == b"HTTP/1.1 405 Method Not Allowed"
    assert h.agent.requests == []


def test_absolute_uri_routes_by_its_authority_and_never_reaches_other_hosts():
    h = Harness()
    warm(h)
    _, t = h.send(b"GET http://evil.example/steal HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert status_line(t) == b"HTTP/1.1 404 Not Found"
    assert h.agent.requests == []
    h.send(b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert h.agent.requests[0].uri == b"http://web.default:8080/a?b=1"


def test_plugins_are_consulted_first_and_a_raising_plugin_is_skipped():
    other = route(name="other", service="web", hosts=["other.example"])

    @implementer(IRoutingPlugin)
    class Boom:
        name, priority = "boom", 0

        def route(self, request, snapshot):
            raise RuntimeError("plugin bug")

    @implementer(IRoutingPlugin)
    class ByHeader:
        name, priority = "by-header", 1

        def route(self, request, snapshot):
            if request.header_values("x-pick") == ("other",):
                return snapshot.routes["default/other"]
            return None

    h = Harness(plugins=(Boom(), ByHeader()))
    warm(h, route(), other)
    h.get(extra=b"X-Pick: other\r\n")
    h.get()
    assert h.counter.get("default/other").request_count == 1
    assert h.counter.get("default/web").request_count == 1
    assert h.pipeline.router.failures == {"boom": 2}


# -- forwarding ---------------------------------------------------------------

def test_forwards_to_service_address_with_host_and_forwarded_headers():
    h = Harness()
    warm(h)
    h.get(b"/a/b?x=1", extra=(b"X-Forwarded-For: 1.1.1.1\r\nConnection: close, X-Hop\r\n"
                              b"X-Hop: 1\r\nKeep-Alive: 5\r\nX-Keep: yes\r\n"))
    [req] = h.agent.requests
    assert req.method == b"GET"
    assert req.uri == b"http://web.default:8080/a/b?x=1"
    hd = req.headers
    assert hd.getRawHeaders(b"host") == [b"example.com"]
    assert hd.getRawHeaders(b"x-forwarded-for") == [b"1.1.1.1, 10.1.2.3"]
    assert hd.getRawHeaders(b"x-forwarded-host") == [b"example.com"]
    assert hd.getRawHeaders(b"x-forwarded-proto") == [b"http"]
    assert hd.getRawHeaders(b"x-keep") == [b"yes"]
    for hop in (b"connection", b"x-hop", b"keep-alive"):
        assert not hd.hasHeader(hop), hop


def test_outer_proxy_forwarded_host_and_proto_are_kept():
    h = Harness()
    warm(h)
    h.get(extra=b"X-Forwarded-Host: public.example\r\nX-Forwarded-Proto: https\r\n")
    hd = h.agent.requests[0].headers
    assert hd.getRawHeaders(b"x-forwarded-host") == [b"public.example"]
    assert hd.getRawHeaders(b"x-forwarded-proto") == [b"https"]


def test_response_streams_as_it_arrives_without_hop_by_hop_headers():
    h = Harness()
    warm(h)
    _, t = h.get()
    resp = h.agent.requests[0].respond(
        200, b"OK", {b"content-type": [b"text/plain"], b"connection": [b"x-secret"],
                     b"x-secret": [b"1"], b"set-cookie": [b"a=1", b"b=2"]})
    resp.push(b"first ")
    assert status_line(t) == b"HTTP/1.1 200 OK"
    assert t.value().endswith(b"first \r\n")  # chunk on the wire before the end
    hd = response_headers(t)
    assert hd.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert not hd.hasHeader(b"x-secret")
    assert not hd.hasHeader(b"server")
    assert hd.getRawHeaders(b"x-keda-http-cold-start") == [b"false"]
    resp.push(b"second")
    resp.end()
    assert t.value().endswith(b"second\r\n0\r\n\r\n")


def test_slow_client_pauses_the_upstream():
    h = Harness()
    warm(h)
    proto, t = h.get()
    resp = h.agent.requests[0].respond()
    channel = proto._channel
    channel.pauseProducing()  # what the transport does when the client is slow
    resp.push(b"x")
    assert resp.transport.paused
    channel.resumeProducing()
    assert not resp.transport.paused


def test_counts_while_in_flight_and_releases_on_completion():
    h = Harness()
    warm(h)
    h.get()
    assert h.counter.as_json_dict() == {"default/web": {"Concurrency": 1, "RequestCount": 1}}
    resp = h.agent.requests[0].respond()
    resp.end()
    assert h.counter.as_json_dict() == {"default/web": {"Concurrency": 0, "RequestCount": 1}}


def test_client_disconnect_cancels_upstream_and_releases_count():
    h = Harness()
    warm(h)
    proto, _ = h.get()
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert h.agent.requests[0].cancelled
    assert h.counter.get("default/web").concurrency == 0


def test_client_disconnect_mid_body_stops_the_upstream():
    h = Harness()
    warm(h)
    proto, _ = h.get()
    resp = h.agent.requests[0].respond()
    resp.push(b"partial")
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert resp.transport.stopped
    assert h.counter.get("default/web").concurrency == 0


def test_refused_upstream_is_502_and_released():
    h = Harness()
    warm(h)
    _, t = h.get()
    h.agent.requests[0].deferred.errback(Failure(ConnectionRefusedError()))
    assert status_line(t) == b"HTTP/1.1 502 Bad Gateway"
    assert h.counter.get("default/web").concurrency == 0


def test_response_header_timeout_is_504_global_and_per_route():
    h = Harness(settings=ProxySettings(response_header_timeout=10))
    warm(h, route(), route(name="fast", hosts=["fast.example"],
                           timeouts=Timeouts(response_header=1)))
    _, slow = h.get()
    _, fast = h.get(host=b"fast.example")
    h.clock.advance(1)
    assert status_line(fast) == b"HTTP/1.1 504 Gateway Timeout"
    assert slow.value() == b""
    h.clock.advance(9)
    assert status_line(slow) == b"HTTP/1.1 504 Gateway Timeout"
    assert all(r.cancelled for r in h.agent.requests)
    assert h.counter.get("default/web").concurrency == 0


def test_unresolvable_port_name_is_500():
    h = Harness()
    load(h.store, routes=[route(port_name="grpc")], services=[service()],
         slices=[endpoint_slice()])
    _, t = h.get()
    assert status_line(t) == b"HTTP/1.1 500 Internal Server Error"


def test_numeric_port_needs_no_service():
    h = Harness()
    load(h.store, routes=[route(port=9000, port_name="")], slices=[endpoint_slice()])
    h.get()
    assert h.agent.requests[0].uri == b"http://web.default:9000/"


def test_post_body_is_sent_upstream():
    h = Harness()
    warm(h)
    h.send(b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello")
    [req] = h.agent.requests
    assert req.method == b"POST"
    assert req.body.length == 5


# -- cold start -----------------------------------------------------------------

def test_cold_request_is_held_then_forwarded_when_ready():
    h = Harness()
    load(h.store, routes=[route()], services=[service()])
    _, t = h.get()
    assert h.agent.requests == []
    assert h.counter.get("default/web").concurrency == 1
    load(h.store, routes=[route()], services=[service()], slices=[endpoint_slice()])
    [req] = h.agent.requests
    resp = req.respond()
    resp.end()
    assert response_headers(t).getRawHeaders(b"x-keda-http-cold-start") == [b"true"]


def test_cold_start_header_can_be_switched_off():
    h = Harness(settings=ProxySettings(enable_cold_start_header=False))
    warm(h)
    _, t = h.get()
    h.agent.requests[0].respond().end()
    assert not response_headers(t).hasHeader(b"x-keda-http-cold-start")


def test_readiness_timeout_without_fallback_is_504():
    h = Harness(settings=ProxySettings(readiness_timeout=2))
    load(h.store, routes=[route()], services=[service()])
    _, t = h.get()
    h.clock.advance(2)
    assert status_line(t) == b"HTTP/1.1 504 Gateway Timeout"
    assert h.gate.waiting() == 0
    assert h.counter.get("default/web").concurrency == 0


def test_fallback_gets_30s_default_then_serves_the_fallback_service():
    r = route(fallback=ServiceRef(name="backup", port=8081))
    h = Harness()
    load(h.store, routes=[r], services=[service()])
    _, t = h.get()
    h.clock.advance(29.9)
    assert h.agent.requests == []
    h.clock.advance(0.1)
    [req] = h.agent.requests
    assert req.uri == b"http://backup.default:8081/"


def test_request_deadline_passed_means_504_even_with_fallback():
    r = route(fallback=ServiceRef(name="backup", port=8081),
              timeouts=Timeouts(readiness=5, request=2))
    h = Harness()
    load(h.store, routes=[r], services=[service()])
    _, t = h.get()
    h.clock.advance(2)
    assert status_line(t) == b"HTTP/1.1 504 Gateway Timeout"
    assert h.agent.requests == []


def test_client_leaving_while_held_cancels_the_wait():
    h = Harness()
    load(h.store, routes=[route()], services=[service()])
    proto, _ = h.get()
    assert h.gate.waiting() == 1
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert h.gate.waiting() == 0
    assert h.counter.get("default/web").concurrency == 0


def test_placeholder_answers_503_at_once_and_still_counts():
    ph = StaticResponse(body="<p>waking up</p>", headers=(("Content-Type", "text/html"),))
    h = Harness()
    load(h.store, routes=[route(placeholder=ph)], services=[service()])
    _, t = h.get()
    assert status_line(t) == b"HTTP/1.1 503 Service Unavailable"
    assert response_body(t) == b"<p>waking up</p>"
    assert response_headers(t).getRawHeaders(b"content-type") == [b"text/html"]
    assert h.counter.as_json_dict()["default/web"] == {"Concurrency": 0, "RequestCount": 1}


# -- static routes ----------------------------------------------------------------

def _static(mode, body=None, cm=None, path="/status"):
    return StaticRoute(rules=(RoutingRule(paths=(path,)),),
                       response=StaticResponse(body=body, body_from_configmap=cm),
                       mode=mode)


def test_static_always_is_served_and_never_counted():
    h = Harness()
    warm(h, route(static_routes=(_static(MODE_ALWAYS, body="fine"),)))
    _, t = h.get(b"/status")
    assert status_line(t) == b"HTTP/1.1 200 OK"
    assert response_body(t) == b"fine"
    assert h.counter.get("default/web").request_count == 0
    assert h.agent.requests == []


def test_static_when_unavailable_forwards_uncounted_when_ready():
    h = Harness()
    warm(h, route(static_routes=(_static("WhenUnavailable", body="down"),)))
    h.get(b"/status")
    assert len(h.agent.requests) == 1
    assert h.counter.get("default/web").request_count == 0


def test_static_when_unavailable_serves_body_when_not_ready():
    h = Harness()
    load(h.store, routes=[route(static_routes=(_static("WhenUnavailable", body="down"),))])
    _, t = h.get(b"/status")
    assert response_body(t) == b"down"


def test_static_configmap_body_by_path_with_content_type():
    cm = ConfigMapKeyRef(name="pages")
    h = Harness()
    warm(h, route(static_routes=(_static(MODE_ALWAYS, cm=cm, path="/"),)),
         configmaps=[configmap("pages", {"index.html": "<h1>hi</h1>", "app.css": "a{}"})])
    _, t = h.get(b"/")
    assert response_body(t) == b"<h1>hi</h1>"
    assert response_headers(t).getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    _, t = h.get(b"/app.css")
    assert response_headers(t).getRawHeaders(b"content-type") == [b"text/css; charset=utf-8"]
    _, t = h.get(b"/favicon.ico")
    assert status_line(t) == b"HTTP/1.1 200 OK" and response_body(t) == b""


def test_static_missing_explicit_configmap_key_is_500():
    cm = ConfigMapKeyRef(name="pages", key="missing.html")
    h = Harness()
    warm(h, route(static_routes=(_static(MODE_ALWAYS, cm=cm, path="/"),)),
         configmaps=[configmap("pages", {"index.html": "x"})])
    _, t = h.get(b"/")
    assert status_line(t) == b"HTTP/1.1 500 Internal Server Error"


# -- direct-pod routing -----------------------------------------------------------

def test_direct_pod_routing_targets_a_ready_pod():
    h = Harness(settings=ProxySettings(direct_pod_routing=True))
    warm(h, slices=[endpoint_slice(ips=("10.0.0.7",), ports=(("http", 3000),))])
    h.get()
    assert h.agent.requests[0].uri == b"http://10.0.0.7:3000/"


def test_direct_pod_routing_resolves_numeric_port_name_through_service():
    h = Harness(settings=ProxySettings(direct_pod_routing=True))
    warm(h, route(port=8080, port_name=""),
         slices=[endpoint_slice(ips=("fd00::1",), ports=(("http", 3000),))])
    h.get()
    assert h.agent.requests[0].uri == b"http://[fd00::1]:3000/"


def test_direct_pod_routing_without_candidates_uses_the_service():
    h = Harness(settings=ProxySettings(direct_pod_routing=True))
    warm(h, slices=[endpoint_slice(ports=(("metrics", 9090),))])
    h.get()
    assert h.agent.requests[0].uri == b"http://web.default:8080/"


def test_join_host_port_brackets_ipv6_only():
    assert join_host_port("10.0.0.1", 80) == "10.0.0.1:80"
    assert join_host_port("fd00::1", 80) == "[fd00::1]:80"


def test_header_rules_route_requests():
    canary = attrs.evolve(route(name="canary"), rules=(
        RoutingRule(hosts=("example.com",), headers=(HeaderMatch("X-Canary", "1"),)),))
    h = Harness()
    warm(h, route(), canary)
    h.get(extra=b"X-Canary: 1\r\n")
    h.get()
    assert h.counter.get("default/canary").request_count == 1
    assert h.counter.get("default/web").request_count == 1
