"""
Where a request can go: a route's Service, or one of its ready pods.
"""

from __future__ import annotations

from typing import Optional, Tuple

from attrs import define, field

from keda_proxy.state._endpoints import join_host_port
from keda_proxy.state._model import ServiceRef
from keda_proxy.state._store import Snapshot
from keda_proxy.upstream._schemes import H2C, H2C_APP_PROTOCOL, HTTP, HTTPS


class RouteError(Exception):
    """A route whose target cannot be turned into an address (500)."""


@define
class Target:
    """Where one attempt goes: the pool key, and what to fall back to."""

    scheme: bytes
    host: str
    port: int
    server_name: str
    port_name: str = ""
    #: for a pod target: the ready pods not yet tried (this one may be among
    #: them), then the Service target
    alternatives: Tuple[Tuple[str, int], ...] = ()
    service: Optional["Target"] = None
    #: the pool key, made once: a target serves many requests
    key: tuple = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        self.key = (self.scheme, self.host, self.port, self.server_name)

    def describe(self) -> str:
        return f"{self.scheme.decode()}://{join_host_port(self.host, self.port)}"


def upstream_port_name(ref: ServiceRef, namespace: str, snapshot: Snapshot) -> str:
    """The port name a request waits on and picks a pod by: the target's
    ``portName``, else the name the Service gives its port number, else ""."""
    if ref.port_name:
        return ref.port_name
    svc = snapshot.services.get(f"{namespace}/{ref.name}")
    sp = svc.port_by_number(ref.port) if svc is not None and ref.port else None
    return sp.name if sp is not None else ""


def resolve_port(ref: ServiceRef, namespace: str,
                 snapshot: Snapshot) -> Tuple[int, str, Optional[str]]:
    """The Service port number, port name and C{appProtocol} for a target.

    ``port`` is used as given (its name is looked up for direct-pod routing,
    "" when the Service is unknown); ``portName`` must resolve through the
    Service.
    """
    svc = snapshot.services.get(f"{namespace}/{ref.name}")
    if ref.port:
        sp = svc.port_by_number(ref.port) if svc is not None else None
        if sp is None:
            return ref.port, "", None
        return ref.port, sp.name, sp.app_protocol
    if not ref.port_name:
        raise RouteError('must specify either "port" or "portName"')
    if svc is None:
        raise RouteError(f"Service {namespace}/{ref.name} not found")
    sp = svc.port_by_name(ref.port_name)
    if sp is None:
        raise RouteError(f"port name {ref.port_name!r} not found in Service {namespace}/{ref.name}")
    return sp.port, sp.name, sp.app_protocol


class ServiceTargets:
    """The Service address of a route's target or fallback, remembered per
    (ref, Services snapshot): it only changes when the Services do.

    Its scheme says what the upstream speaks (L{keda_proxy.upstream._schemes}):
    C{https} for upstream TLS, else C{h2c} for a Service port whose
    C{appProtocol} is C{kubernetes.io/h2c}, else C{http}.  Pod targets
    keep it.
    """

    def __init__(self, upstream_tls: bool):
        self._scheme = HTTPS if upstream_tls else HTTP
        #: (id(ServiceRef), namespace) -> (ref, services, Target)
        self._cache: dict = {}

    def target(self, ref: ServiceRef, namespace: str, snapshot: Snapshot) -> Target:
        """@raise RouteError: the target's port cannot be resolved."""
        services = snapshot.services
        cache = self._cache
        key = (id(ref), namespace)
        hit = cache.get(key)
        if hit is not None and hit[0] is ref and hit[1] is services:
            return hit[2]
        port, port_name, app_protocol = resolve_port(ref, namespace, snapshot)
        host = f"{ref.name}.{namespace}"
        scheme = self._scheme
        if scheme == HTTP and app_protocol == H2C_APP_PROTOCOL:
            scheme = H2C
        target = Target(scheme, host, port, server_name=host, port_name=port_name)
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (ref, services, target)
        return target


def switch_pod(context, selector, pod: Optional[Tuple[str, int]]) -> None:
    """The request now goes to C{pod} (None: no pod any more): the
    selector hears of the pod it leaves and of the one it takes."""
    if context.pod is not None:
        selector.finished(context.pod)
    context.pod = pod
    if pod is not None:
        selector.started(pod)
