"""
Tests for keda_proxy.state._resources: raw Kubernetes dicts to model values.
"""

from __future__ import annotations

import contextlib
import copy
import datetime

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keda_proxy.state._model import (
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    MODE_ALWAYS,
    MODE_WHEN_UNAVAILABLE,
    OVERFLOW_PLACEHOLDER,
    OVERFLOW_REJECT,
    ConfigMap,
    ConfigMapKeyRef,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    HeaderMatch,
    RequestFacts,
    Route,
    RoutingRule,
    ScalingMetric,
    Service,
    ServicePort,
    ServiceRef,
    StaticResponse,
    StaticRoute,
    Timeouts,
)
from keda_proxy.state._resources import (
    InvalidResource,
    Parsed,
    expand_lists,
    parse_many,
    parse_object,
)
from keda_proxy.state._routing import RoutingTable, normalize_host

FULL_IR = """
apiVersion: http.keda.sh/v1beta1
kind: InterceptorRoute
metadata:
  name: web
  namespace: shop
  creationTimestamp: "2024-05-01T10:00:00Z"
spec:
  target:
    service: web-svc
    portName: http
  rules:
    - hosts: ["shop.example.com", "*.shop.example.com"]
      paths:
        - value: /api
        - value: /v2
      headers:
        - name: X-Tenant
          value: acme
        - name: X-Debug
    - hosts: ["*"]
  coldStart:
    fallback:
      service:
        name: fallback-svc
        port: 8080
    maxPendingRequests: 500
    overflow: Placeholder
    placeholder:
      response:
        statusCode: 202
        body: warming up
        headers:
          Retry-After: "5"
          Content-Type: text/plain
  timeouts:
    readiness: 45s
    request: 1m30s
    responseHeader: 500ms
  scalingMetric:
    concurrency:
      targetValue: 50
    requestRate:
      targetValue: 200
      window: 2m
      granularity: 2s
  staticRoutes:
    - rules:
        - paths: [{value: /healthz}]
      response:
        body: ok
      responseMode: Always
    - rules:
        - hosts: [static.example.com]
          headers: [{name: Accept, value: text/html}]
      response:
        statusCode: 503
        bodyFromConfigMap:
          name: pages
          key: maintenance.html
"""


def ir(**spec_overrides):
    """A minimal valid InterceptorRoute dict, with spec fields replaced."""
    spec = {"target": {"service": "svc", "port": 80}}
    spec.update(spec_overrides)
    return {
        "apiVersion": "http.keda.sh/v1beta1",
        "kind": "InterceptorRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


def hso(**spec_overrides):
    spec = {"scaleTargetRef": {"service": "svc", "port": 8080}}
    spec.update(spec_overrides)
    return {
        "apiVersion": "http.keda.sh/v1alpha1",
        "kind": "HTTPScaledObject",
        "metadata": {"name": "legacy", "namespace": "apps"},
        "spec": spec,
    }


def invalid(obj) -> str:
    with pytest.raises(InvalidResource) as info:
        parse_object(obj)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- InterceptorRoute ------------------------------------------------------


def test_full_interceptor_route_every_field():
    parsed = parse_object(yaml.safe_load(FULL_IR))
    assert parsed == Parsed(KIND_INTERCEPTOR_ROUTE, "shop/web", parsed.value)
    assert parsed.value == Route(
        namespace="shop",
        name="web",
        target=ServiceRef(name="web-svc", port=0, port_name="http"),
        rules=(
            RoutingRule(
                hosts=("shop.example.com", "*.shop.example.com"),
                paths=("/api", "/v2"),
                headers=(HeaderMatch("x-tenant", "acme"), HeaderMatch("x-debug", None)),
            ),
            RoutingRule(hosts=("*",)),
        ),
        creation_timestamp="2024-05-01T10:00:00Z",
        fallback=ServiceRef(name="fallback-svc", port=8080),
        placeholder=StaticResponse(
            status_code=202,
            body="warming up",
            headers=(("Retry-After", "5"), ("Content-Type", "text/plain")),
        ),
        max_pending_requests=500,
        overflow=OVERFLOW_PLACEHOLDER,
        timeouts=Timeouts(readiness=45.0, request=90.0, response_header=0.5),
        static_routes=(
            StaticRoute(
                rules=(RoutingRule(paths=("/healthz",)),),
                response=StaticResponse(body="ok"),
                mode=MODE_ALWAYS,
            ),
            StaticRoute(
                rules=(RoutingRule(hosts=("static.example.com",),
                                   headers=(HeaderMatch("accept", "text/html"),)),),
                response=StaticResponse(
                    status_code=503,
                    body_from_configmap=ConfigMapKeyRef("pages", "maintenance.html")),
                mode=MODE_WHEN_UNAVAILABLE,
            ),
        ),
        scaling_metric=ScalingMetric(concurrency_target=50, rate_target=200,
                                     rate_window=120.0, rate_granularity=2.0),
        kind=KIND_INTERCEPTOR_ROUTE,
    )


def test_minimal_interceptor_route_defaults():
    obj = ir()
    del obj["metadata"]["namespace"]
    route = parse_object(obj).value
    assert route.namespace == "default"
    assert route.key == "default/web"
    assert route.target == ServiceRef(name="svc", port=80)
    assert route.rules == ()
    assert route.fallback is None and route.placeholder is None
    assert route.max_pending_requests is None  # KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS
    assert route.overflow == OVERFLOW_REJECT
    assert route.timeouts == Timeouts()
    assert route.static_routes == ()
    assert route.scaling_metric == ScalingMetric()
    assert route.creation_timestamp == ""


def test_zero_durations_are_kept_distinct_from_unset():
    route = parse_object(ir(timeouts={"request": "0s", "readiness": "0"})).value
    assert route.timeouts == Timeouts(readiness=0.0, request=0.0, response_header=None)


def test_request_rate_defaults_window_and_granularity():
    route = parse_object(ir(scalingMetric={"requestRate": {"targetValue": 5}})).value
    assert route.scaling_metric == ScalingMetric(rate_target=5, rate_window=60.0,
                                                 rate_granularity=1.0)


def test_unquoted_yaml_timestamp_becomes_rfc3339():
    obj = yaml.safe_load(
        "apiVersion: http.keda.sh/v1beta1\nkind: InterceptorRoute\n"
        "metadata: {name: a, creationTimestamp: 2024-05-01T12:00:00+02:00}\n"
        "spec: {target: {service: s, port: 1}}\n")
    assert isinstance(obj["metadata"]["creationTimestamp"], datetime.datetime)
    assert parse_object(obj).value.creation_timestamp == "2024-05-01T10:00:00Z"


def test_null_optional_fields_mean_unset():
    route = parse_object(ir(rules=None, coldStart=None, timeouts=None,
                            staticRoutes=None, scalingMetric=None)).value
    assert route.rules == () and route.timeouts == Timeouts()


@pytest.mark.parametrize("spec, expected", [
    ({}, "InterceptorRoute default/web: spec.target: required"),
    ({"target": {"port": 80}}, "spec.target.service: required"),
    ({"target": {"service": "", "port": 80}}, "spec.target.service: must not be empty"),
    ({"target": {"service": "s"}},
     ("InterceptorRoute default/web: spec.target: exactly one of 'port' or 'portName' "
     "must be set")),
    ({"target": {"service": "s", "port": 80, "portName": "http"}},
     "spec.target: exactly one of 'port' or 'portName' must be set"),
    ({"target": {"service": "s", "port": 0}}, "spec.target.port: must be between 1 and 65535"),
    ({"target": {"service": "s", "port": 65536}}, "spec.target.port: must be between"),
    ({"target": {"service": "s", "port": "80"}},
     "spec.target.port: must be an integer, not a string"),
    ({"target": {"service": "s", "port": True}}, "spec.target.port: must be an integer"),
    ({"target": {"service": "s", "portName": ""}}, "spec.target.portName: must not be empty"),
    ({"target": ["s"]}, "spec.target: must be an object, not a list"),
])
def test_target_validation(spec, expected):
    obj = ir()
    obj["spec"] = spec
    assert expected in invalid(obj)


@pytest.mark.parametrize("cold_start, expected", [
    ({}, ("spec.coldStart: at least one of 'fallback', 'placeholder' or "
          "'maxPendingRequests' must be set")),
    ({"overflow": "Reject"}, "spec.coldStart: at least one of 'fallback', 'placeholder'"),
    ({"maxPendingRequests": 0},
     "spec.coldStart.maxPendingRequests: must be between 1 and 2147483647, not 0"),
    ({"maxPendingRequests": -5}, "spec.coldStart.maxPendingRequests: must be between 1"),
    ({"maxPendingRequests": 2**31}, "spec.coldStart.maxPendingRequests: must be between 1"),
    ({"maxPendingRequests": "10"},
     "spec.coldStart.maxPendingRequests: must be an integer, not a string"),
    ({"maxPendingRequests": 1.5}, "spec.coldStart.maxPendingRequests: must be an integer"),
    ({"maxPendingRequests": True}, "spec.coldStart.maxPendingRequests: must be an integer"),
    ({"maxPendingRequests": 5, "overflow": "Queue"},
     "spec.coldStart.overflow: must be 'Reject' or 'Placeholder', not 'Queue'"),
    ({"maxPendingRequests": 5, "overflow": "reject"},
     "spec.coldStart.overflow: must be 'Reject' or 'Placeholder', not 'reject'"),
    ({"maxPendingRequests": 5, "overflow": ""}, "spec.coldStart.overflow: must be 'Reject'"),
    ({"maxPendingRequests": 5, "overflow": 1},
     "spec.coldStart.overflow: must be a string, not an integer"),
    ({"maxPendingRequests": 5, "overflow": "Placeholder"},
     "spec.coldStart.overflow: 'Placeholder' needs 'placeholder' to be set"),
    ({"fallback": {"service": {"name": "f", "port": 1}}, "overflow": "Placeholder"},
     "spec.coldStart.overflow: 'Placeholder' needs 'placeholder' to be set"),
    ({"fallback": {}}, "spec.coldStart.fallback.service: required"),
    ({"fallback": {"service": {"name": "f"}}},
     "spec.coldStart.fallback.service: exactly one of 'port' or 'portName' must be set"),
    ({"fallback": {"service": {"name": "f", "port": 1, "portName": "x"}}},
     "spec.coldStart.fallback.service: exactly one of"),
    ({"fallback": {"service": {"port": 1}}}, "spec.coldStart.fallback.service.name: required"),
    ({"placeholder": {}}, "spec.coldStart.placeholder.response: required"),
    ({"placeholder": {"response": {"body": "a", "bodyFromConfigMap": {"name": "c"}}}},
     "spec.coldStart.placeholder.response: at most one of 'body' or 'bodyFromConfigMap'"),
    ({"placeholder": {"response": {"statusCode": 99}}},
     "spec.coldStart.placeholder.response.statusCode: must be between 100 and 599"),
    ({"placeholder": {"response": {"statusCode": 600}}}, "statusCode: must be between"),
    ({"placeholder": {"response": {"statusCode": 0}}}, "statusCode: must be between"),
    ({"placeholder": {"response": {"bodyFromConfigMap": {"key": "k"}}}},
     "bodyFromConfigMap.name: required"),
    ({"placeholder": {"response": {"headers": {"X-A": 5}}}},
     "headers['X-A']: value must be a string, not an integer"),
    ({"placeholder": {"response": {"headers": {"Bad Name": "v"}}}},
     "headers['Bad Name']: not a valid HTTP header name"),
    ({"placeholder": {"response": {"headers": {"X-A": "a\r\nSet-Cookie: x"}}}},
     "must not contain CR, LF or NUL"),
    ({"placeholder": {"response": {"body": "x" * 32769}}}, "longer than 32768 characters"),
    ("fallback", "spec.coldStart: must be an object, not a string"),
])
def test_cold_start_validation(cold_start, expected):
    assert expected in invalid(ir(coldStart=cold_start))


@pytest.mark.parametrize("cold_start, limit, overflow", [
    ({"maxPendingRequests": 1}, 1, OVERFLOW_REJECT),
    ({"maxPendingRequests": 2**31 - 1, "overflow": "Reject"}, 2**31 - 1, OVERFLOW_REJECT),
    ({"maxPendingRequests": 3, "overflow": "Placeholder", "placeholder": {"response": {}}},
     3, OVERFLOW_PLACEHOLDER),
    # a placeholder route may say Placeholder without a limit: it then serves
    # the placeholder at once, as without one
    ({"overflow": "Placeholder", "placeholder": {"response": {}}}, None, OVERFLOW_PLACEHOLDER),
    ({"fallback": {"service": {"name": "f", "port": 1}}, "maxPendingRequests": None},
     None, OVERFLOW_REJECT),
])
def test_pending_limit_and_overflow_are_parsed(cold_start, limit, overflow):
    route = parse_object(ir(coldStart=cold_start)).value
    assert (route.max_pending_requests, route.overflow) == (limit, overflow)


def test_a_route_with_an_invalid_pending_limit_is_skipped_with_one_line_the_others_kept():
    good = ir(coldStart={"maxPendingRequests": 10})
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["coldStart"] = {"maxPendingRequests": 10, "overflow": "Placeholder"}
    parsed, errors = parse_many([good, bad])
    assert [p.key for p in parsed] == ["default/web"]
    assert parsed[0].value.max_pending_requests == 10
    assert errors == ["InterceptorRoute default/bad: spec.coldStart.overflow: 'Placeholder' "
                      "needs 'placeholder' to be set"]


def test_placeholder_alone_and_fallback_by_port_name_are_valid():
    route = parse_object(ir(coldStart={
        "fallback": {"service": {"name": "f", "portName": "web"}},
        "placeholder": {"response": {}},
    })).value
    assert route.fallback == ServiceRef(name="f", port_name="web")
    assert route.placeholder == StaticResponse()


@pytest.mark.parametrize("static_routes, expected", [
    ([{"response": {}}], "spec.staticRoutes[0].rules: at least one rule is required"),
    ([{"rules": [], "response": {}}], "spec.staticRoutes[0].rules: at least one rule"),
    ([{"rules": [{}]}], "spec.staticRoutes[0].response: required"),
    ([{"rules": [{}], "response": {}, "responseMode": "Sometimes"}],
     ("spec.staticRoutes[0].responseMode: must be 'Always' or 'WhenUnavailable', "
     "not 'Sometimes'")),
    ([{"rules": [{}], "response": {"body": "a", "bodyFromConfigMap": {"name": "c"}}}],
     "spec.staticRoutes[0].response: at most one of 'body' or 'bodyFromConfigMap' may be set"),
    ([{"rules": [{}], "response": {"statusCode": 700}}],
     "spec.staticRoutes[0].response.statusCode: must be between 100 and 599"),
    ([{"rules": [{"paths": ["/x"]}], "response": {}}],
     "spec.staticRoutes[0].rules[0].paths[0]: must be an object, not a string"),
    ({"rules": []}, "spec.staticRoutes: must be a list, not an object"),
])
def test_static_route_validation(static_routes, expected):
    assert expected in invalid(ir(staticRoutes=static_routes))


@pytest.mark.parametrize("rules, expected", [
    ([{"headers": [{"name": ""}]}], "spec.rules[0].headers[0].name: must not be empty"),
    ([{"headers": [{"value": "v"}]}], "spec.rules[0].headers[0].name: required"),
    ([{"headers": [{"name": "a", "value": 1}]}],
     "spec.rules[0].headers[0].value: must be a string, not an integer"),
    ([{"headers": [{"name": "a"}, {"name": "a", "value": "x"}]}],
     "spec.rules[0].headers: duplicate header name 'a'"),
    ([{"paths": [{"value": 5}]}], "spec.rules[0].paths[0].value: must be a string"),
    ([{"paths": [{"value": ""}]}], "spec.rules[0].paths[0].value: must not be empty"),
    ([{"paths": [{}]}], "spec.rules[0].paths[0].value: required"),
    ([{"hosts": "a.example"}], "spec.rules[0].hosts: must be a list, not a string"),
    ([{"hosts": ["a", None]}], "spec.rules[0].hosts[1]: required"),
    ([{"hosts": ["a", "a"]}], "spec.rules[0].hosts: duplicate value 'a'"),
    (["x"], "spec.rules[0]: must be an object, not a string"),
    ({"hosts": []}, "spec.rules: must be a list, not an object"),
])
def test_rule_validation(rules, expected):
    assert expected in invalid(ir(rules=rules))


# -- internationalised hosts -------------------------------------------------


def test_unicode_hosts_are_kept_in_punycode_form_and_route():
    route = parse_object(ir(
        rules=[{"hosts": ["bücher.example", "*.Bücher.example", "shop.Example.com"]}],
        staticRoutes=[{"rules": [{"hosts": ["bücher.example"]}], "response": {}}],
    )).value
    assert route.rules[0].hosts == (
        "xn--bcher-kva.example", "*.xn--bcher-kva.example", "shop.Example.com")
    assert route.static_routes[0].rules[0].hosts == ("xn--bcher-kva.example",)
    table = RoutingTable.build([route])
    for host in ("xn--bcher-kva.example", "www.xn--bcher-kva.example", "shop.example.com"):
        assert table.route(RequestFacts.from_mapping(normalize_host(host), "/", {})) is route


def test_http_scaled_object_unicode_hosts_are_converted():
    route = parse_object(hso(hosts=["bücher.example"])).value
    assert route.rules[0].hosts == ("xn--bcher-kva.example",)


@pytest.mark.parametrize("obj, expected", [
    (ir(rules=[{"hosts": ["ok.example", "ab--ü.example"]}]),
     "InterceptorRoute default/web: spec.rules[0].hosts[1]: invalid internationalized "
     "host name 'ab--ü.example': "),
    (ir(staticRoutes=[{"rules": [{"hosts": ["ü" * 64 + ".example"]}], "response": {}}]),
     "spec.staticRoutes[0].rules[0].hosts[0]: invalid internationalized host name"),
    (hso(hosts=["a\u200db.ü.example"]),
     "HTTPScaledObject apps/legacy: spec.hosts[0]: invalid internationalized host name"),
])
def test_invalid_unicode_host_makes_the_route_invalid(obj, expected):
    assert expected in invalid(obj)


def test_invalid_unicode_host_is_one_error_line_and_the_rest_parses():
    parsed, errors = parse_many([ir(rules=[{"hosts": ["ab--ü.example"]}]),
                                 hso(hosts=["bücher.example"])])
    assert [p.key for p in parsed] == ["apps/legacy"]
    assert len(errors) == 1
    assert errors[0].startswith("InterceptorRoute default/web: spec.rules[0].hosts[0]: ")
    assert "'ab--ü.example'" in errors[0] and "\n" not in errors[0]


@pytest.mark.parametrize("timeouts, expected", [
    ({"readiness": "30"}, "spec.timeouts.readiness: invalid duration '30'"),
    ({"request": "-1s"}, "spec.timeouts.request: must not be negative, not '-1s'"),
    ({"responseHeader": 30}, "spec.timeouts.responseHeader: must be a string, not an integer"),
    ({"request": "9" * 400 + "h"}, "spec.timeouts.request: duration"),
    ({"request": "3000000h"}, "spec.timeouts.request: duration '3000000h' is out of range"),
    ("30s", "spec.timeouts: must be an object, not a string"),
])
def test_timeout_validation(timeouts, expected):
    assert expected in invalid(ir(timeouts=timeouts))


@pytest.mark.parametrize("metric, expected", [
    ({}, "spec.scalingMetric: at least one of 'concurrency' or 'requestRate' must be set"),
    ({"concurrency": {}}, "spec.scalingMetric.concurrency.targetValue: required"),
    ({"concurrency": {"targetValue": 0}},
     "spec.scalingMetric.concurrency.targetValue: must be between 1"),
    ({"requestRate": {"targetValue": 1, "window": "0s"}},
     "spec.scalingMetric.requestRate.window: must be greater than zero"),
    ({"requestRate": {"targetValue": 1, "granularity": "x"}},
     "spec.scalingMetric.requestRate.granularity: invalid duration"),
])
def test_scaling_metric_validation(metric, expected):
    assert expected in invalid(ir(scalingMetric=metric))


@pytest.mark.parametrize("metadata, expected", [
    ({}, "InterceptorRoute default/?: metadata.name: required"),
    ({"name": ""}, "metadata.name: must not be empty"),
    ({"name": 12}, "metadata.name: must be a string, not an integer"),
    ({"name": "a", "namespace": ["x"]}, "metadata.namespace: must be a string"),
    ({"name": "a", "creationTimestamp": 5}, "metadata.creationTimestamp: must be an RFC 3339"),
])
def test_metadata_validation(metadata, expected):
    obj = ir()
    obj["metadata"] = metadata
    assert expected in invalid(obj)


def test_invalid_resource_names_the_object_and_keeps_parts():
    obj = ir()
    obj["metadata"]["namespace"] = "shop"
    obj["spec"]["target"] = {"service": "s"}
    with pytest.raises(InvalidResource) as info:
        parse_object(obj)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.kind, e.key) == ("InterceptorRoute", "shop/web")
    assert e.reason == "spec.target: exactly one of 'port' or 'portName' must be set"
    assert str(e) == ("InterceptorRoute shop/web: spec.target: exactly one of 'port' "
                      "or 'portName' must be set")


def test_non_mapping_object_is_invalid():
    assert "expected a mapping, got a list" in invalid([1, 2])


# -- HTTPScaledObject ------------------------------------------------------


def test_http_scaled_object_converted_every_field():
    obj = hso(
        hosts=["legacy.example.com", "www.legacy.example.com"],
        pathPrefixes=["/app", "/static"],
        headers=[{"name": "X-Version", "value": "2"}, {"name": "X-Canary"}],
        scaleTargetRef={"name": "deploy", "kind": "Deployment", "apiVersion": "apps/v1",
                        "service": "legacy-svc", "portName": "http"},
        timeouts={"conditionWait": "20s", "responseHeader": "3s"},
        coldStartTimeoutFailoverRef={"service": "fb", "port": 9090, "timeoutSeconds": 12},
        scalingMetric={"concurrency": {"targetValue": 7},
                       "requestRate": {"targetValue": 9, "window": "30s",
                                       "granularity": "500ms"}},
        replicas={"min": 0, "max": 10},
        targetPendingRequests=5,
    )
    obj["metadata"]["creationTimestamp"] = "2023-01-02T03:04:05Z"
    parsed = parse_object(obj)
    assert (parsed.kind, parsed.key) == (KIND_HTTP_SCALED_OBJECT, "apps/legacy")
    assert parsed.value == Route(
        namespace="apps",
        name="legacy",
        target=ServiceRef(name="legacy-svc", port_name="http"),
        rules=(RoutingRule(
            hosts=("legacy.example.com", "www.legacy.example.com"),
            paths=("/app", "/static"),
            headers=(HeaderMatch("x-version", "2"), HeaderMatch("x-canary")),
        ),),
        creation_timestamp="2023-01-02T03:04:05Z",
        fallback=ServiceRef(name="fb", port=9090),
        # the failover's timeoutSeconds overrides conditionWait, as in Go
        timeouts=Timeouts(readiness=12.0, response_header=3.0),
        scaling_metric=ScalingMetric(concurrency_target=7, rate_target=9,
                                     rate_window=30.0, rate_granularity=0.5),
        kind=KIND_HTTP_SCALED_OBJECT,
    )


def test_http_scaled_object_minimal_is_one_catch_all_rule():
    route = parse_object(hso()).value
    assert route.rules == (RoutingRule(),)
    assert route.target == ServiceRef(name="svc", port=8080)
    assert route.timeouts == Timeouts()
    assert route.fallback is None
    assert route.scaling_metric == ScalingMetric()
    assert route.kind == KIND_HTTP_SCALED_OBJECT


def test_http_scaled_object_condition_wait_without_failover():
    route = parse_object(hso(timeouts={"conditionWait": "20s"})).value
    assert route.timeouts == Timeouts(readiness=20.0)


def test_http_scaled_object_non_positive_timeouts_are_ignored():
    route = parse_object(hso(timeouts={"conditionWait": "0s",
                                       "responseHeader": "-5s"})).value
    assert route.timeouts == Timeouts()


def test_http_scaled_object_failover_timeout_defaults_to_30s_and_zero_means_unset():
    route = parse_object(hso(coldStartTimeoutFailoverRef={"service": "fb", "port": 1})).value
    assert route.timeouts.readiness == 30.0
    route = parse_object(hso(timeouts={"conditionWait": "7s"},
                             coldStartTimeoutFailoverRef={"service": "fb", "port": 1,
                                                          "timeoutSeconds": 0})).value
    assert route.timeouts.readiness == 7.0


def test_http_scaled_object_scaling_metric_defaults():
    route = parse_object(hso(scalingMetric={"concurrency": {},
                                            "requestRate": {"window": "0s"}})).value
    assert route.scaling_metric == ScalingMetric(
        concurrency_target=100, rate_target=100, rate_window=60.0, rate_granularity=1.0)


@pytest.mark.parametrize("spec, expected", [
    ({"scaleTargetRef": None}, "HTTPScaledObject apps/legacy: spec.scaleTargetRef: required"),
    ({"scaleTargetRef": {"port": 1}}, "spec.scaleTargetRef.service: required"),
    ({"scaleTargetRef": {"service": "s"}},
     "spec.scaleTargetRef: exactly one of 'port' or 'portName' must be set"),
    ({"scaleTargetRef": {"service": "s", "port": 1, "portName": "p"}},
     "spec.scaleTargetRef: exactly one of"),
    ({"coldStartTimeoutFailoverRef": {"service": "f"}},
     "spec.coldStartTimeoutFailoverRef: exactly one of 'port' or 'portName' must be set"),
    ({"coldStartTimeoutFailoverRef": {"service": "f", "port": 1, "timeoutSeconds": "5"}},
     "spec.coldStartTimeoutFailoverRef.timeoutSeconds: must be an integer"),
    ({"hosts": "a"}, "spec.hosts: must be a list, not a string"),
    ({"pathPrefixes": [1]}, "spec.pathPrefixes[0]: must be a string"),
    ({"headers": [{"name": ""}]}, "spec.headers[0].name: must not be empty"),
    ({"timeouts": {"conditionWait": "soon"}}, "spec.timeouts.conditionWait: invalid duration"),
])
def test_http_scaled_object_validation(spec, expected):
    assert expected in invalid(hso(**spec))


# -- Service, EndpointSlice, ConfigMap -------------------------------------


def test_service():
    parsed = parse_object({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "demo", "namespace": "ns"},
        "spec": {"clusterIP": "10.0.0.7", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
            {"port": 443, "targetPort": "https"},
        ]},
    })
    assert (parsed.kind, parsed.key) == (KIND_SERVICE, "ns/demo")
    assert parsed.value == Service(
        namespace="ns", name="demo", cluster_ip="10.0.0.7",
        ports=(ServicePort("http", 80, "http", 8080), ServicePort("", 443, None, "https")))


@pytest.mark.parametrize("spec, expected", [
    ({"ports": [{"name": "x"}]}, "Service default/demo: spec.ports[0].port: required"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port: must be an integer"),
    ({"ports": [{"port": 80, "targetPort": [1]}]},
     "spec.ports[0].targetPort: must be an integer or a string, not a list"),
    ({"clusterIP": 1}, "spec.clusterIP: must be a string"),
])
def test_service_validation(spec, expected):
    assert expected in invalid({"apiVersion": "v1", "kind": "Service",
                                "metadata": {"name": "demo"}, "spec": spec})


def test_endpoint_slice():
    parsed = parse_object({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "demo-abc", "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": "demo"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": True, "terminating": False}},
            {"addresses": ["10.1.0.2", "10.1.0.3"], "conditions": {"ready": False}},
            {"addresses": ["10.1.0.4"]},
        ],
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": None, "port": 9090},
            {"port": 9091},
            {"name": "all"},  # no number: "all ports", unusable for us
        ],
    })
    assert (parsed.kind, parsed.key) == (KIND_ENDPOINT_SLICE, "ns/demo-abc")
    assert parsed.value == EndpointSlice(
        namespace="ns", name="demo-abc", service_name="demo",
        endpoints=(
            Endpoint(("10.1.0.1",), ready=True, terminating=False),
            Endpoint(("10.1.0.2", "10.1.0.3"), ready=False, terminating=None),
            Endpoint(("10.1.0.4",), ready=None, terminating=None),
        ),
        ports=(EndpointPort("http", 8080), EndpointPort("", 9090), EndpointPort("", 9091)),
    )
    assert parsed.value.service_key == "ns/demo"


def test_endpoint_slice_with_null_lists():
    parsed = parse_object({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": "e"}, "endpoints": None, "ports": None})
    assert parsed.value == EndpointSlice(namespace="default", name="e", service_name="")


@pytest.mark.parametrize("body, expected", [
    ({"endpoints": [{"addresses": "10.0.0.1"}]}, "endpoints[0].addresses: must be a list"),
    ({"endpoints": [{"addresses": [], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready: must be a boolean, not a string"),
    ({"ports": [{"port": 0}]}, "ports[0].port: must be between 1 and 65535"),
    ({"ports": {"port": 1}}, "ports: must be a list"),
])
def test_endpoint_slice_validation(body, expected):
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "e"}}
    obj.update(body)
    assert expected in invalid(obj)


def config_map(labels, data=None):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "pages", "namespace": "ns", "labels": labels},
            "data": data}


def test_labelled_config_map():
    parsed = parse_object(config_map({"http.keda.sh/response-body": "true", "app": "x"},
                                     {"index.html": "<p>hi</p>", "a.txt": ""}))
    assert parsed == Parsed(KIND_CONFIG_MAP, "ns/pages",
                            ConfigMap("ns", "pages", {"index.html": "<p>hi</p>", "a.txt": ""}))


@pytest.mark.parametrize("labels", [None, {}, {"app": "x"},
                                    {"http.keda.sh/response-body": "false"}])
def test_unlabelled_config_map_is_ignored(labels):
    assert parse_object(config_map(labels, {"a": "b"})) is None


def test_config_map_label_must_be_a_quoted_string():
    assert "quote it" in invalid(config_map({"http.keda.sh/response-body": True}))


def test_config_map_data_values_must_be_strings():
    assert "data['n']: keys and values must be strings" in invalid(
        config_map({"http.keda.sh/response-body": "true"}, {"n": 1}))


# -- dispatch, lists -------------------------------------------------------


@pytest.mark.parametrize("obj", [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
    {"apiVersion": "http.keda.sh/v1alpha1", "kind": "InterceptorRoute", "spec": 5},
    {"apiVersion": "v1", "kind": "EndpointSlice"},
    {"kind": "Service"},
    {"apiVersion": 1, "kind": ["x"]},
    {},
])
def test_unknown_kinds_are_ignored(obj):
    assert parse_object(obj) is None


def test_parse_many_expands_lists_and_collects_errors():
    bad = ir(target={"service": "s"})
    bad["metadata"]["name"] = "bad"
    objs = [
        {"apiVersion": "v1", "kind": "List", "items": [ir(), bad, hso()]},
        {"apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRouteList",
         "items": [{"metadata": {"name": "typed", "namespace": "x"},
                    "spec": {"target": {"service": "s", "portName": "p"}}}]},
        {"apiVersion": "apps/v1", "kind": "Deployment"},
        config_map({}),
    ]
    parsed, errors = parse_many(objs)
    assert [(p.kind, p.key) for p in parsed] == [
        (KIND_INTERCEPTOR_ROUTE, "default/web"),
        (KIND_HTTP_SCALED_OBJECT, "apps/legacy"),
        (KIND_INTERCEPTOR_ROUTE, "x/typed"),
    ]
    assert errors == [("InterceptorRoute default/bad: spec.target: exactly one of 'port' "
                      "or 'portName' must be set")]


def test_expand_lists_leaves_plain_objects_and_nests():
    inner = {"kind": "List", "items": [ir()]}
    assert list(expand_lists(ir())) == [ir()]
    assert list(expand_lists({"kind": "List", "items": [inner, 3]})) == [ir(), 3]


def test_parsing_does_not_mutate_the_input():
    obj = yaml.safe_load(FULL_IR)
    before = copy.deepcopy(obj)
    parse_object(obj)
    list(expand_lists({"apiVersion": "v1", "kind": "ServiceList",
                       "items": [{"metadata": {"name": "a"}}]}))
    assert obj == before


def test_example_manifest_parses_cleanly():
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "examples" / "manifests" / "example.yaml"
    parsed, errors = parse_many(yaml.safe_load_all(path.read_text()))
    assert errors == []
    by_key = {(p.kind, p.key): p.value for p in parsed}
    assert set(by_key) == {
        (KIND_SERVICE, "default/demo"),
        (KIND_ENDPOINT_SLICE, "default/demo"),
        (KIND_INTERCEPTOR_ROUTE, "default/demo"),
        (KIND_HTTP_SCALED_OBJECT, "default/legacy"),
    }
    demo = by_key[(KIND_INTERCEPTOR_ROUTE, "default/demo")]
    assert demo.target == ServiceRef(name="demo", port_name="http")
    assert demo.static_routes[0].mode == MODE_ALWAYS
    assert demo.static_routes[0].response.body == "ok"
    assert by_key[(KIND_SERVICE, "default/demo")].cluster_ip == "127.0.0.1"


# -- fuzz ------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**40, max_value=2**40)
            | st.floats(allow_nan=True) | st.text(max_size=12)
            | st.sampled_from(["0s", "1m", "-3s", "http", "/", "Always", "true", "x",
                               "WhenUnavailable", "9999999999h"]))
_keys = st.sampled_from([
    "target", "service", "port", "portName", "name", "rules", "hosts", "paths", "value",
    "headers", "coldStart", "fallback", "placeholder", "response", "statusCode", "body",
    "bodyFromConfigMap", "key", "timeouts", "readiness", "request", "responseHeader",
    "staticRoutes", "responseMode", "scalingMetric", "concurrency", "requestRate",
    "targetValue", "window", "granularity", "scaleTargetRef", "pathPrefixes",
    "conditionWait", "coldStartTimeoutFailoverRef", "timeoutSeconds", "ports",
    "clusterIP", "appProtocol", "targetPort", "endpoints", "addresses", "conditions",
    "ready", "terminating", "data", "labels", "namespace", "creationTimestamp",
    "kubernetes.io/service-name", "http.keda.sh/response-body",
]) | st.text(max_size=5)
_garbage = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_keys, children, max_size=6),
    max_leaves=30,
)
_types = st.sampled_from([
    ("http.keda.sh/v1beta1", "InterceptorRoute"),
    ("http.keda.sh/v1alpha1", "HTTPScaledObject"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "ConfigMap"),
])


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_types, st.dictionaries(_keys, _garbage, max_size=8), _garbage, _garbage, _garbage)
def test_garbage_never_raises_anything_but_invalid_resource(
        api_kind, spec, metadata, endpoints, data):
    api_version, kind = api_kind
    obj = {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec,
           "endpoints": endpoints, "ports": endpoints, "data": data}
    try:
        result = parse_object(obj)
    except InvalidResource as e:
        assert "\n" not in str(e) and str(e).startswith(kind + " ")
        return
    assert result is None or result.kind in (kind, KIND_HTTP_SCALED_OBJECT)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_garbage)
def test_garbage_inside_a_valid_route_spec(extra):
    """Each spec field, one at a time, replaced with garbage."""
    for field_name in ("target", "rules", "coldStart", "timeouts", "staticRoutes",
                       "scalingMetric"):
        with contextlib.suppress(InvalidResource):
            parse_object(ir(**{field_name: extra}))


def _locations(value, prefix=()):
    """Every (path) inside a nested dict/list, for replacing one spot."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _locations(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _locations(v, (*prefix, i))


def _replaced(value, location, new):
    if not location:
        return new
    head, rest = location[0], location[1:]
    out = copy.copy(value)
    out[head] = _replaced(value[head], rest, new)
    return out


_VALID = [
    yaml.safe_load(FULL_IR),
    hso(hosts=["a"], pathPrefixes=["/"], headers=[{"name": "h", "value": "v"}],
        timeouts={"conditionWait": "1s", "responseHeader": "2s"},
        coldStartTimeoutFailoverRef={"service": "f", "port": 1, "timeoutSeconds": 3},
        scalingMetric={"concurrency": {"targetValue": 1},
                       "requestRate": {"targetValue": 2, "window": "1m",
                                       "granularity": "1s"}}),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
     "spec": {"clusterIP": "10.0.0.1",
              "ports": [{"name": "h", "port": 80, "targetPort": 8080, "appProtocol": "h2c"}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
     "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": True,
                                                             "terminating": False}}],
     "ports": [{"name": "h", "port": 8080}]},
    config_map({"http.keda.sh/response-body": "true"}, {"index.html": "x"}),
]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.sampled_from(_VALID), st.data(), _garbage)
def test_garbage_anywhere_in_a_valid_object(valid, data, garbage):
    """One spot anywhere in a full, valid object replaced with garbage."""
    location = data.draw(st.sampled_from(list(_locations(valid))))
    obj = _replaced(valid, location, garbage)
    try:
        parse_object(obj)
    except InvalidResource as e:
        assert "\n" not in str(e)
