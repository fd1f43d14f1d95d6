"""
Immutable value types for routes and the cluster objects the proxy reads.

Every source (manifest files, the Kubernetes API) parses into these types,
and every snapshot is built from them, so the request path never touches a
raw Kubernetes dict.  All are frozen attrs classes: a snapshot that holds
them can be shared between readers without copying or locking.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Tuple

from attrs import field, frozen

#: Static-route response modes (``spec.staticRoutes[].responseMode``).
MODE_ALWAYS = "Always"
MODE_WHEN_UNAVAILABLE = "WhenUnavailable"

#: What a route does with a request past its cold-start pending limit
#: (``spec.coldStart.overflow``): answer 503, or serve the placeholder.
OVERFLOW_REJECT = "Reject"
OVERFLOW_PLACEHOLDER = "Placeholder"

KIND_INTERCEPTOR_ROUTE = "InterceptorRoute"
KIND_HTTP_SCALED_OBJECT = "HTTPScaledObject"
KIND_SERVICE = "Service"
KIND_ENDPOINT_SLICE = "EndpointSlice"
KIND_CONFIG_MAP = "ConfigMap"

ALL_KINDS = (
    KIND_INTERCEPTOR_ROUTE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_SERVICE,
    KIND_ENDPOINT_SLICE,
    KIND_CONFIG_MAP,
)


def object_key(namespace: str, name: str) -> str:
    """The ``namespace/name`` key used for routes, services and the queue."""
    return f"{namespace}/{name}"


@frozen
class HeaderMatch:
    """One header condition; ``value=None`` means "present with any value".

    ``name`` is stored lower-cased: header names are case-insensitive.
    """

    name: str = field(converter=str.lower)
    value: Optional[str] = None


@frozen
class RoutingRule:
    """Hosts OR'ed, paths OR'ed, headers AND'ed; an empty list matches all."""

    hosts: Tuple[str, ...] = ()
    paths: Tuple[str, ...] = ()
    headers: Tuple[HeaderMatch, ...] = ()


@frozen
class ServiceRef:
    """A Service and either a port number or a port name (exactly one)."""

    name: str
    port: int = 0
    port_name: str = ""


@frozen
class ConfigMapKeyRef:
    """A ConfigMap body; an empty ``key`` derives it from the request path."""

    name: str
    key: str = ""


@frozen
class StaticResponse:
    """A response served without contacting the backend.

    ``status_code`` 0 means "the caller's default" (503 for a placeholder,
    200 for a static route).  ``headers`` keeps the manifest's order.
    """

    status_code: int = 0
    body: Optional[str] = None
    body_from_configmap: Optional[ConfigMapKeyRef] = None
    headers: Tuple[Tuple[str, str], ...] = ()


@frozen
class StaticRoute:
    rules: Tuple[RoutingRule, ...]
    response: StaticResponse
    mode: str = MODE_WHEN_UNAVAILABLE


@frozen
class Timeouts:
    """Per-route timeouts in seconds; ``None`` means "use the global one"."""

    readiness: Optional[float] = None
    request: Optional[float] = None
    response_header: Optional[float] = None


@frozen
class ScalingMetric:
    concurrency_target: Optional[int] = None
    rate_target: Optional[int] = None
    rate_window: Optional[float] = None
    rate_granularity: Optional[float] = None


@frozen(cache_hash=True)
class Route:
    """An InterceptorRoute, or an HTTPScaledObject converted to one.

    Its hash and its two keys are worked out once: every request uses them.
    """

    namespace: str
    name: str
    target: ServiceRef
    rules: Tuple[RoutingRule, ...] = ()
    #: RFC 3339 creationTimestamp as written by the API server; these sort
    #: chronologically as strings.  Empty sorts first.
    creation_timestamp: str = ""
    fallback: Optional[ServiceRef] = None
    placeholder: Optional[StaticResponse] = None
    #: ``spec.coldStart.maxPendingRequests``: how many requests this
    #: interceptor holds for the route while its target has no ready
    #: endpoint; None means ``KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS``
    max_pending_requests: Optional[int] = None
    #: ``spec.coldStart.overflow``: L{OVERFLOW_REJECT} or L{OVERFLOW_PLACEHOLDER}
    overflow: str = OVERFLOW_REJECT
    timeouts: Timeouts = Timeouts()
    static_routes: Tuple[StaticRoute, ...] = ()
    scaling_metric: ScalingMetric = ScalingMetric()
    kind: str = KIND_INTERCEPTOR_ROUTE
    #: the queue and metrics key, ``namespace/name``
    key: str = field(init=False, eq=False, repr=False)
    #: the target Service's ``namespace/name``
    service_key: str = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "key", object_key(self.namespace, self.name))
        object.__setattr__(self, "service_key", object_key(self.namespace, self.target.name))


@frozen
class ServicePort:
    name: str
    port: int
    app_protocol: Optional[str] = None
    target_port: Optional[object] = None


@frozen
class Service:
    namespace: str
    name: str
    ports: Tuple[ServicePort, ...] = ()
    #: ``spec.clusterIP``; "" or "None" for headless Services.
    cluster_ip: str = ""

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)

    def port_by_name(self, name: str) -> Optional[ServicePort]:
        for p in self.ports:
            if p.name == name:
                return p
        return None

    def port_by_number(self, number: int) -> Optional[ServicePort]:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@frozen
class EndpointPort:
    name: str
    port: int


@frozen
class Endpoint:
    """One address of an EndpointSlice.

    ``ready`` is ``None`` when the API left it unset, which Kubernetes
    defines as ready (publishNotReadyAddresses); ``terminating`` likewise
    defaults to false.
    """

    addresses: Tuple[str, ...]
    ready: Optional[bool] = None
    terminating: Optional[bool] = None

    @property
    def is_ready(self) -> bool:
        return self.ready is not False and self.terminating is not True

    @property
    def is_starting(self) -> bool:
        return self.ready is False and self.terminating is not True


@frozen
class EndpointSlice:
    namespace: str
    name: str
    #: ``metadata.labels["kubernetes.io/service-name"]``.
    service_name: str
    endpoints: Tuple[Endpoint, ...] = ()
    ports: Tuple[EndpointPort, ...] = ()

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)

    @property
    def service_key(self) -> str:
        return object_key(self.namespace, self.service_name)


@frozen
class ConfigMap:
    namespace: str
    name: str
    data: Mapping[str, str] = field(factory=dict)

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)


@frozen
class ServiceEndpoints:
    """What the proxy knows about one Service's ready pods.

    ``candidates`` maps a port name ("" for an unnamed port) to the ready
    ``(ip, port)`` pairs, each pair taken from one EndpointSlice so that a
    rolling deploy that changes a port number stays consistent.
    """

    ready: bool = False
    candidates: Mapping[str, Tuple[Tuple[str, int], ...]] = field(factory=dict)
    #: the same for pods that are not ready yet and not terminating: a
    #: scaled-up pod is listed from the moment it has an address
    starting: Mapping[str, Tuple[Tuple[str, int], ...]] = field(factory=dict)


NO_ENDPOINTS = ServiceEndpoints()


def _no_headers(name: str) -> Tuple[str, ...]:
    return ()


class RequestFacts(NamedTuple):
    """What routing may look at: enough of a request, none of its transport.

    ``host`` is lower-cased with any port removed (IPv6 literals lose their
    brackets); ``path`` is the raw path without the query string;
    ``header_values(name)`` returns every value of a header, ``name`` being
    lower-case.  Routing plugins receive this too.

    A named tuple rather than a frozen attrs class: it is made for every
    request, and builds in half the time.
    """

    host: str
    path: str
    method: str = "GET"
    header_values: object = _no_headers

    @classmethod
    def from_mapping(cls, host: str, path: str, headers=None, method: str = "GET"):
        """Build facts from ``{name: [values]}``, for tests and plugins."""
        lowered = {k.lower(): tuple(v) for k, v in (headers or {}).items()}
        return cls(host=host, path=path, method=method,
                   header_values=lambda n: lowered.get(n, ()))
