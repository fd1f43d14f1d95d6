"""
A Service's ready pods: merging its EndpointSlices into candidates, choosing
one, and writing or reading the ``host:port`` that names it.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, List, Tuple

from keda_proxy.state._model import Endpoint, EndpointSlice, ServiceEndpoints


def join_host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed (``[fd00::1]:8080``)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_host_port(hostport: str) -> Tuple[str, int]:
    """The inverse of L{join_host_port}; raises ValueError for anything else."""
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {hostport!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(f"brackets around a non-IPv6 host: {hostport!r}")
    elif ":" in host:
        raise ValueError(f"unbracketed IPv6 host: {hostport!r}")
    return host, int(port)


def service_endpoints(slices: Iterable[EndpointSlice]) -> ServiceEndpoints:
    """Ready ``(ip, port)`` pairs by port name, over all slices of a Service
    (and, apart, those of pods still starting).

    Each address is paired only with ports of its own slice: during a rolling
    deploy two slices may give the same port name different numbers.
    Duplicates across slices are dropped and the order is stable (sorted), so
    two rebuilds from the same slices give equal values.
    """
    slices = tuple(slices)
    candidates = _pairs_by_port_name(slices, Endpoint.is_ready.fget)
    ready = any(candidates.values()) or _has_ready_address(slices)
    return ServiceEndpoints(ready=ready, candidates=candidates,
                            starting=_pairs_by_port_name(slices, Endpoint.is_starting.fget))


def _pairs_by_port_name(slices, wanted) -> Dict[str, Tuple[Tuple[str, int], ...]]:
    seen: Dict[str, set] = {}
    by_name: Dict[str, List[Tuple[str, int]]] = {}
    for s in slices:
        addresses = [a for ep in s.endpoints if wanted(ep) for a in ep.addresses]
        if not addresses:
            continue
        for p in s.ports:
            bucket = seen.setdefault(p.name, set())
            for ip in addresses:
                pair = (ip, p.port)
                if pair not in bucket:
                    bucket.add(pair)
                    by_name.setdefault(p.name, []).append(pair)
    return {name: tuple(sorted(pairs)) for name, pairs in by_name.items()}


def _has_ready_address(slices) -> bool:
    return any(ep.is_ready and ep.addresses for s in slices for ep in s.endpoints)
