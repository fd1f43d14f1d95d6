"""
Raw Kubernetes objects (dicts from YAML or the API's JSON) to model values.

Both sources -- manifest files and the Kubernetes API -- hand their
objects to L{parse_object}, so an InterceptorRoute means the same thing
whichever way it arrived.  The manifest source never passes through an
API server, so the CRD's C{+kubebuilder:validation} rules (and defaults)
that the server would enforce are enforced here instead.

Anything wrong with an object raises L{InvalidResource} and nothing
else: a caller skips that one object with one log line and keeps the
rest.  That is why every field is type-checked before it is used.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

from attrs import frozen

from keda_proxy.state._duration import parse_duration
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
    Route,
    RoutingRule,
    ScalingMetric,
    Service,
    ServicePort,
    ServiceRef,
    StaticResponse,
    StaticRoute,
    Timeouts,
    object_key,
)
from keda_proxy.state._routing import host_to_ascii

API_INTERCEPTOR_ROUTE = "http.keda.sh/v1beta1"
API_HTTP_SCALED_OBJECT = "http.keda.sh/v1alpha1"
API_CORE = "v1"
API_DISCOVERY = "discovery.k8s.io/v1"

#: The label that makes a ConfigMap a response-body source; the Kubernetes
#: source selects on it server-side, the manifest source relies on us.
RESPONSE_BODY_LABEL = "http.keda.sh/response-body"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

#: ``(apiVersion, kind)`` pairs this module understands; others are ignored.
SUPPORTED_TYPES = frozenset({
    (API_INTERCEPTOR_ROUTE, KIND_INTERCEPTOR_ROUTE),
    (API_HTTP_SCALED_OBJECT, KIND_HTTP_SCALED_OBJECT),
    (API_CORE, KIND_SERVICE),
    (API_DISCOVERY, KIND_ENDPOINT_SLICE),
    (API_CORE, KIND_CONFIG_MAP),
})

#: StaticResponse.body's MaxLength in the CRD.
MAX_BODY_LENGTH = 32768
#: The most a response-body ConfigMap's data may hold, keys and values in
#: UTF-8 (1 MiB, the limit the API server puts on a whole ConfigMap).
MAX_CONFIG_MAP_BYTES = 1024 * 1024
#: Go's time.Duration tops out at 2**63 ns; longer strings overflow there.
_MAX_DURATION = (2**63 - 1) / 1e9
#: RFC 9110 token characters, for response header names.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEFAULT_RATE_WINDOW = 60.0
_DEFAULT_RATE_GRANULARITY = 1.0
#: v1alpha1 kubebuilder defaults the API server would have filled in.
_HSO_DEFAULT_TARGET = 100
_HSO_DEFAULT_FAILOVER_TIMEOUT = 30


class InvalidResource(ValueError):
    """An object that must be skipped, with a one-line reason naming it.

    @ivar kind: the object's kind, as written (or C{"object"}).
    @ivar key: C{namespace/name}, as far as it could be read.
    @ivar reason: the field path and the problem, e.g.
        C{"spec.target: exactly one of 'port' or 'portName' must be set"}.
    """

    def __init__(self, kind: str, key: str, reason: str):
        self.kind = kind
        self.key = key
        self.reason = reason
        super().__init__(f"{kind} {key}: {reason}")


@frozen
class Parsed:
    """One parsed object: which kind map it goes in, under which key."""

    kind: str
    key: str
    value: Any


class _Bad(Exception):
    """A field problem, raised before we wrap it with the object's name."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)


# -- public entry points ---------------------------------------------------


def parse_object(obj: Any) -> Parsed | None:
    """Parse one Kubernetes object.

    @return: a L{Parsed}, or L{None} for kinds this proxy does not read
        (and for ConfigMaps without the response-body label).
    @raise InvalidResource: the object is of a supported kind but invalid.
    """
    if not isinstance(obj, dict):
        raise InvalidResource("object", "?", f"expected a mapping, got {_type_name(obj)}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    parser = _PARSERS.get((api_version, kind))
    if parser is None:
        return None
    namespace, name = "default", "?"
    try:
        metadata = _mapping(obj.get("metadata"), "metadata")
        namespace = _string(metadata.get("namespace"), "metadata.namespace") or "default"
        name = _string(metadata.get("name"), "metadata.name", required=True, non_empty=True)
        return parser(obj, metadata, namespace, name)
    except _Bad as e:
        raise InvalidResource(kind, object_key(namespace, name), str(e)) from None


def expand_lists(obj: Any) -> Iterator[Any]:
    """Yield C{obj}, or the items of a C{kind: List} (or C{FooList}) object.

    Items of a typed list (as the API returns them) may omit their own
    apiVersion and kind; they inherit them from the list.
    """
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List") and "items" in obj):
        yield obj
        return
    items = obj.get("items")
    if not isinstance(items, list):
        yield obj  # let parse_object judge it (it ignores unknown kinds)
        return
    item_kind = kind[: -len("List")]
    for item in items:
        if item_kind and isinstance(item, dict) and "kind" not in item:
            item = dict(item, kind=item_kind)
            item.setdefault("apiVersion", obj.get("apiVersion"))
        yield from expand_lists(item)


def parse_many(objs: Iterable[Any]) -> tuple[list[Parsed], list[str]]:
    """Parse many objects, expanding lists; invalid ones become error lines."""
    parsed: list[Parsed] = []
    errors: list[str] = []
    for obj in objs:
        for item in expand_lists(obj):
            try:
                result = parse_object(item)
            except InvalidResource as e:
                errors.append(str(e))
                continue
            if result is not None:
                parsed.append(result)
    return parsed, errors


# -- InterceptorRoute ------------------------------------------------------


def _interceptor_route(obj, metadata, namespace, name) -> Parsed:
    spec = _mapping(obj.get("spec"), "spec")
    target = _service_ref(spec.get("target"), "spec.target", "service")
    fallback, placeholder, max_pending, overflow = _cold_start(spec.get("coldStart"),
                                                               "spec.coldStart")
    route = Route(
        namespace=namespace,
        name=name,
        target=target,
        rules=tuple(
            _routing_rule(r, f"spec.rules[{i}]")
            for i, r in enumerate(_sequence(spec.get("rules"), "spec.rules"))
        ),
        creation_timestamp=_timestamp(metadata.get("creationTimestamp"),
                                      "metadata.creationTimestamp"),
        fallback=fallback,
        placeholder=placeholder,
        max_pending_requests=max_pending,
        overflow=overflow,
        timeouts=_timeouts(spec.get("timeouts"), "spec.timeouts"),
        static_routes=tuple(
            _static_route(s, f"spec.staticRoutes[{i}]")
            for i, s in enumerate(_sequence(spec.get("staticRoutes"), "spec.staticRoutes"))
        ),
        scaling_metric=_scaling_metric(spec.get("scalingMetric"), "spec.scalingMetric"),
        kind=KIND_INTERCEPTOR_ROUTE,
    )
    return Parsed(KIND_INTERCEPTOR_ROUTE, route.key, route)


def _service_ref(value, path, name_field) -> ServiceRef:
    """A Service plus exactly one of port / portName (both CRDs' rule)."""
    m = _mapping(value, path, required=True)
    name = _string(m.get(name_field), f"{path}.{name_field}", required=True, non_empty=True)
    port = _integer(m.get("port"), f"{path}.port", 1, 65535)
    port_name = _string(m.get("portName"), f"{path}.portName", non_empty=True)
    if (port is None) == (port_name is None):
        raise _Bad(path, "exactly one of 'port' or 'portName' must be set")
    return ServiceRef(name=name, port=port or 0, port_name=port_name or "")


def _routing_rule(value, path) -> RoutingRule:
    m = _mapping(value, path, required=True)
    hosts = _string_list(m.get("hosts"), f"{path}.hosts")
    _no_duplicates(hosts, f"{path}.hosts")
    hosts = _ascii_hosts(hosts, f"{path}.hosts")
    paths = []
    for i, p in enumerate(_sequence(m.get("paths"), f"{path}.paths")):
        pm = _mapping(p, f"{path}.paths[{i}]", required=True)
        paths.append(_string(pm.get("value"), f"{path}.paths[{i}].value",
                             required=True, non_empty=True))
    return RoutingRule(hosts=hosts, paths=tuple(paths),
                       headers=_header_matches(m.get("headers"), f"{path}.headers"))


def _ascii_hosts(hosts, path) -> tuple[str, ...]:
    """Hosts with their Unicode labels in punycode form, the form clients
    send; an ASCII host is kept as written.  A host that has no punycode
    form (invalid IDNA) makes the whole object invalid."""
    out = []
    for i, host in enumerate(hosts):
        try:
            out.append(host_to_ascii(host))
        except ValueError as e:
            reason = " ".join(str(e).split())
            raise _Bad(f"{path}[{i}]", f"invalid internationalized host name "
                                       f"{_short(host)}: {reason}") from None
    return tuple(out)


def _header_matches(value, path) -> tuple[HeaderMatch, ...]:
    out = []
    for i, h in enumerate(_sequence(value, path)):
        hm = _mapping(h, f"{path}[{i}]", required=True)
        name = _string(hm.get("name"), f"{path}[{i}].name", required=True, non_empty=True)
        out.append(HeaderMatch(name=name, value=_string(hm.get("value"), f"{path}[{i}].value")))
    _no_duplicates([h.name for h in out], path, what="header name")
    return tuple(out)


def _cold_start(value, path):
    """C{(fallback, placeholder, maxPendingRequests, overflow)}, with v0.16's
    rules: a limit of at least 1 (an int32), C{overflow} one of the two
    modes (default C{Reject}), C{Placeholder} only with a placeholder, and
    at least one of fallback, placeholder or limit set."""
    if value is None:
        return None, None, None, OVERFLOW_REJECT
    m = _mapping(value, path)
    fallback = placeholder = None
    if m.get("fallback") is not None:
        fb = _mapping(m["fallback"], f"{path}.fallback")
        fallback = _service_ref(fb.get("service"), f"{path}.fallback.service", "name")
    if m.get("placeholder") is not None:
        ph = _mapping(m["placeholder"], f"{path}.placeholder")
        placeholder = _static_response(ph.get("response"), f"{path}.placeholder.response")
    max_pending = _integer(m.get("maxPendingRequests"), f"{path}.maxPendingRequests",
                           1, 2**31 - 1)
    overflow = _string(m.get("overflow"), f"{path}.overflow")
    if overflow is None:
        overflow = OVERFLOW_REJECT
    elif overflow not in (OVERFLOW_REJECT, OVERFLOW_PLACEHOLDER):
        raise _Bad(f"{path}.overflow", f"must be {OVERFLOW_REJECT!r} or "
                                       f"{OVERFLOW_PLACEHOLDER!r}, not {_short(overflow)}")
    if fallback is None and placeholder is None and max_pending is None:
        raise _Bad(path, "at least one of 'fallback', 'placeholder' or "
                         "'maxPendingRequests' must be set")
    if overflow == OVERFLOW_PLACEHOLDER and placeholder is None:
        raise _Bad(f"{path}.overflow", f"{OVERFLOW_PLACEHOLDER!r} needs 'placeholder' to be set")
    return fallback, placeholder, max_pending, overflow


def _timeouts(value, path) -> Timeouts:
    m = _mapping(value, path)
    return Timeouts(
        readiness=_duration(m.get("readiness"), f"{path}.readiness"),
        request=_duration(m.get("request"), f"{path}.request"),
        response_header=_duration(m.get("responseHeader"), f"{path}.responseHeader"),
    )


def _static_route(value, path) -> StaticRoute:
    m = _mapping(value, path, required=True)
    rules = _sequence(m.get("rules"), f"{path}.rules")
    if not rules:
        raise _Bad(f"{path}.rules", "at least one rule is required")
    mode = _string(m.get("responseMode"), f"{path}.responseMode") or MODE_WHEN_UNAVAILABLE
    if mode not in (MODE_ALWAYS, MODE_WHEN_UNAVAILABLE):
        raise _Bad(f"{path}.responseMode",
                   f"must be {MODE_ALWAYS!r} or {MODE_WHEN_UNAVAILABLE!r}, not {_short(mode)}")
    return StaticRoute(
        rules=tuple(_routing_rule(r, f"{path}.rules[{i}]") for i, r in enumerate(rules)),
        response=_static_response(m.get("response"), f"{path}.response"),
        mode=mode,
    )


def _static_response(value, path) -> StaticResponse:
    m = _mapping(value, path, required=True)
    status = _integer(m.get("statusCode"), f"{path}.statusCode", 100, 599)
    body = _string(m.get("body"), f"{path}.body")
    if body is not None and len(body) > MAX_BODY_LENGTH:
        raise _Bad(f"{path}.body", f"longer than {MAX_BODY_LENGTH} characters")
    ref = None
    if m.get("bodyFromConfigMap") is not None:
        rm = _mapping(m["bodyFromConfigMap"], f"{path}.bodyFromConfigMap")
        ref = ConfigMapKeyRef(
            name=_string(rm.get("name"), f"{path}.bodyFromConfigMap.name",
                         required=True, non_empty=True),
            key=_string(rm.get("key"), f"{path}.bodyFromConfigMap.key") or "",
        )
    if body is not None and ref is not None:
        raise _Bad(path, "at most one of 'body' or 'bodyFromConfigMap' may be set")
    headers = []
    for k, v in _mapping(m.get("headers"), f"{path}.headers").items():
        hpath = f"{path}.headers[{_short(k)}]"
        if not isinstance(k, str) or not _TOKEN.match(k):
            raise _Bad(hpath, "not a valid HTTP header name")
        if not isinstance(v, str):
            raise _Bad(hpath, f"value must be a string, not {_type_name(v)}")
        if any(c in v for c in "\r\n\0"):
            raise _Bad(hpath, "value must not contain CR, LF or NUL")
        headers.append((k, v))
    return StaticResponse(status_code=status or 0, body=body,
                          body_from_configmap=ref, headers=tuple(headers))


def _scaling_metric(value, path) -> ScalingMetric:
    if value is None:
        return ScalingMetric()
    m = _mapping(value, path)
    conc = rate = None
    window = granularity = None
    if m.get("concurrency") is not None:
        cm = _mapping(m["concurrency"], f"{path}.concurrency")
        conc = _integer(cm.get("targetValue"), f"{path}.concurrency.targetValue",
                        1, 2**31 - 1, required=True)
    if m.get("requestRate") is not None:
        rpath = f"{path}.requestRate"
        rm = _mapping(m["requestRate"], rpath)
        rate = _integer(rm.get("targetValue"), f"{rpath}.targetValue", 1, 2**31 - 1,
                        required=True)
        window = _positive(_duration(rm.get("window"), f"{rpath}.window"),
                           f"{rpath}.window", _DEFAULT_RATE_WINDOW)
        granularity = _positive(_duration(rm.get("granularity"), f"{rpath}.granularity"),
                                f"{rpath}.granularity", _DEFAULT_RATE_GRANULARITY)
    if conc is None and rate is None:
        raise _Bad(path, "at least one of 'concurrency' or 'requestRate' must be set")
    return ScalingMetric(concurrency_target=conc, rate_target=rate,
                         rate_window=window, rate_granularity=granularity)


def _positive(value, path, default):
    if value is None:
        return default
    if value <= 0:
        raise _Bad(path, "must be greater than zero")
    return value


# -- HTTPScaledObject ------------------------------------------------------


def _http_scaled_object(obj, metadata, namespace, name) -> Parsed:
    """Convert to the route model the way the Go routing table does.

    Hosts, path prefixes and headers become one rule; timeouts apply only
    when positive; the failover's timeoutSeconds overrides conditionWait.
    """
    spec = _mapping(obj.get("spec"), "spec")
    target = _service_ref(spec.get("scaleTargetRef"), "spec.scaleTargetRef", "service")
    rule = RoutingRule(
        hosts=_ascii_hosts(_string_list(spec.get("hosts"), "spec.hosts"), "spec.hosts"),
        paths=tuple(_string_list(spec.get("pathPrefixes"), "spec.pathPrefixes")),
        headers=_header_matches(spec.get("headers"), "spec.headers"),
    )
    readiness = response_header = None
    if spec.get("timeouts") is not None:
        tm = _mapping(spec["timeouts"], "spec.timeouts")
        wait = _duration(tm.get("conditionWait"), "spec.timeouts.conditionWait",
                         allow_negative=True)
        if wait is not None and wait > 0:
            readiness = wait
        header = _duration(tm.get("responseHeader"), "spec.timeouts.responseHeader",
                           allow_negative=True)
        if header is not None and header > 0:
            response_header = header
    fallback = None
    if spec.get("coldStartTimeoutFailoverRef") is not None:
        fpath = "spec.coldStartTimeoutFailoverRef"
        fallback = _service_ref(spec["coldStartTimeoutFailoverRef"], fpath, "service")
        seconds = _integer(spec["coldStartTimeoutFailoverRef"].get("timeoutSeconds"),
                           f"{fpath}.timeoutSeconds")
        if seconds is None:
            seconds = _HSO_DEFAULT_FAILOVER_TIMEOUT
        if seconds > 0:
            readiness = float(seconds)
    route = Route(
        namespace=namespace,
        name=name,
        target=target,
        rules=(rule,),
        creation_timestamp=_timestamp(metadata.get("creationTimestamp"),
                                      "metadata.creationTimestamp"),
        fallback=fallback,
        timeouts=Timeouts(readiness=readiness, response_header=response_header),
        scaling_metric=_hso_scaling_metric(spec.get("scalingMetric"), "spec.scalingMetric"),
        kind=KIND_HTTP_SCALED_OBJECT,
    )
    return Parsed(KIND_HTTP_SCALED_OBJECT, route.key, route)


def _hso_scaling_metric(value, path) -> ScalingMetric:
    """v1alpha1 has no minimums; absent fields get the CRD defaults."""
    if value is None:
        return ScalingMetric()
    m = _mapping(value, path)
    conc = rate = window = granularity = None
    if m.get("concurrency") is not None:
        cm = _mapping(m["concurrency"], f"{path}.concurrency")
        conc = _integer(cm.get("targetValue"), f"{path}.concurrency.targetValue")
        conc = _HSO_DEFAULT_TARGET if conc is None else conc
    if m.get("requestRate") is not None:
        rpath = f"{path}.requestRate"
        rm = _mapping(m["requestRate"], rpath)
        rate = _integer(rm.get("targetValue"), f"{rpath}.targetValue")
        rate = _HSO_DEFAULT_TARGET if rate is None else rate
        # Go would copy a zero or negative window and divide by it later;
        # the default is the only useful reading of one.
        window = _duration(rm.get("window"), f"{rpath}.window", allow_negative=True)
        window = window if window and window > 0 else _DEFAULT_RATE_WINDOW
        granularity = _duration(rm.get("granularity"), f"{rpath}.granularity",
                                allow_negative=True)
        granularity = (granularity if granularity and granularity > 0
                       else _DEFAULT_RATE_GRANULARITY)
    return ScalingMetric(concurrency_target=conc, rate_target=rate,
                         rate_window=window, rate_granularity=granularity)


# -- core kinds ------------------------------------------------------------


def _service(obj, metadata, namespace, name) -> Parsed:
    spec = _mapping(obj.get("spec"), "spec")
    ports = []
    for i, p in enumerate(_sequence(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        pm = _mapping(p, path, required=True)
        target_port = pm.get("targetPort")
        if target_port is not None and (isinstance(target_port, bool)
                                        or not isinstance(target_port, (int, str))):
            raise _Bad(f"{path}.targetPort",
                       f"must be an integer or a string, not {_type_name(target_port)}")
        ports.append(ServicePort(
            name=_string(pm.get("name"), f"{path}.name") or "",
            port=_integer(pm.get("port"), f"{path}.port", 1, 65535, required=True),
            app_protocol=_string(pm.get("appProtocol"), f"{path}.appProtocol"),
            target_port=target_port,
        ))
    service = Service(namespace=namespace, name=name, ports=tuple(ports),
                      cluster_ip=_string(spec.get("clusterIP"), "spec.clusterIP") or "")
    return Parsed(KIND_SERVICE, service.key, service)


def _endpoint_slice(obj, metadata, namespace, name) -> Parsed:
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    service_name = _string(labels.get(SERVICE_NAME_LABEL),
                           f"metadata.labels[{SERVICE_NAME_LABEL}]") or ""
    endpoints = []
    for i, e in enumerate(_sequence(obj.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        em = _mapping(e, path, required=True)
        cond = _mapping(em.get("conditions"), f"{path}.conditions")
        endpoints.append(Endpoint(
            addresses=tuple(_string_list(em.get("addresses"), f"{path}.addresses")),
            ready=_boolean(cond.get("ready"), f"{path}.conditions.ready"),
            terminating=_boolean(cond.get("terminating"), f"{path}.conditions.terminating"),
        ))
    ports = []
    for i, p in enumerate(_sequence(obj.get("ports"), "ports")):
        pm = _mapping(p, f"ports[{i}]", required=True)
        number = _integer(pm.get("port"), f"ports[{i}].port", 1, 65535)
        port_name = _string(pm.get("name"), f"ports[{i}].name") or ""
        if number is not None:  # a port with no number means "all ports": unusable
            ports.append(EndpointPort(name=port_name, port=number))
    eps = EndpointSlice(namespace=namespace, name=name, service_name=service_name,
                        endpoints=tuple(endpoints), ports=tuple(ports))
    return Parsed(KIND_ENDPOINT_SLICE, eps.key, eps)


def _config_map(obj, metadata, namespace, name) -> Parsed | None:
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    label = labels.get(RESPONSE_BODY_LABEL)
    if label is None:
        return None
    if not isinstance(label, str):
        # An unquoted YAML ``true`` is a boolean; the API server rejects it,
        # so say so rather than silently ignoring the ConfigMap.
        raise _Bad(f"metadata.labels[{RESPONSE_BODY_LABEL}]",
                   f"label values must be strings (quote it: \"true\"), not {_type_name(label)}")
    if label != "true":
        return None
    data = {}
    size = 0
    for k, v in _mapping(obj.get("data"), "data").items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _Bad(f"data[{_short(k)}]", "keys and values must be strings")
        size += _utf8_length(k) + _utf8_length(v)
        data[k] = v
    if size > MAX_CONFIG_MAP_BYTES:
        raise _Bad("data", f"{size} bytes is over the {MAX_CONFIG_MAP_BYTES}-byte limit")
    cm = ConfigMap(namespace=namespace, name=name, data=data)
    return Parsed(KIND_CONFIG_MAP, cm.key, cm)


_PARSERS = {
    (API_INTERCEPTOR_ROUTE, KIND_INTERCEPTOR_ROUTE): _interceptor_route,
    (API_HTTP_SCALED_OBJECT, KIND_HTTP_SCALED_OBJECT): _http_scaled_object,
    (API_CORE, KIND_SERVICE): _service,
    (API_DISCOVERY, KIND_ENDPOINT_SLICE): _endpoint_slice,
    (API_CORE, KIND_CONFIG_MAP): _config_map,
}


# -- typed field readers ---------------------------------------------------
#
# Each takes the raw value and its path; ``None`` (absent or null) means
# "not set".  A wrong type raises _Bad naming the path, never TypeError.


def _mapping(value, path, *, required=False) -> dict:
    if value is None:
        if required:
            raise _Bad(path, "required")
        return {}
    if not isinstance(value, dict):
        raise _Bad(path, f"must be an object, not {_type_name(value)}")
    return value


def _sequence(value, path) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(path, f"must be a list, not {_type_name(value)}")
    return value


def _string(value, path, *, required=False, non_empty=False) -> str | None:
    if value is None:
        if required:
            raise _Bad(path, "required")
        return None
    if not isinstance(value, str):
        raise _Bad(path, f"must be a string, not {_type_name(value)}")
    if non_empty and not value:
        raise _Bad(path, "must not be empty")
    return value


def _string_list(value, path) -> list[str]:
    return [_string(v, f"{path}[{i}]", required=True)
            for i, v in enumerate(_sequence(value, path))]


def _integer(value, path, lo=None, hi=None, *, required=False) -> int | None:
    if value is None:
        if required:
            raise _Bad(path, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(path, f"must be an integer, not {_type_name(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _Bad(path, f"must be between {lo} and {hi}, not {_short(value)}")
    return value


def _boolean(value, path) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _Bad(path, f"must be a boolean, not {_type_name(value)}")


def _duration(value, path, *, allow_negative=False) -> float | None:
    """A metav1.Duration string ("30s", "1m30s") as float seconds."""
    text = _string(value, path)
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except (ValueError, OverflowError):
        raise _Bad(path, f"invalid duration {_short(text)} "
                         "(want e.g. \"30s\" or \"1m30s\")") from None
    if not math.isfinite(seconds) or abs(seconds) > _MAX_DURATION:
        raise _Bad(path, f"duration {_short(text)} is out of range")
    if seconds < 0 and not allow_negative:
        raise _Bad(path, f"must not be negative, not {_short(text)}")
    return seconds


def _timestamp(value, path) -> str:
    """RFC 3339 text; YAML turns unquoted timestamps into datetimes."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%dT00:00:00Z")
    raise _Bad(path, f"must be an RFC 3339 timestamp, not {_type_name(value)}")


def _no_duplicates(values, path, what="value") -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise _Bad(path, f"duplicate {what} {_short(v)}")
        seen.add(v)


_TYPE_NAMES = (  # bool before int: a bool is an int to isinstance
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
    (dict, "an object"), (list, "a list"),
)


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _type_name(value) -> str:
    if value is None:
        return "null"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _short(value, limit=60) -> str:
    """A one-line repr, cut short so a log line stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
