"""
Merging a Service's EndpointSlices into what the proxy routes on.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

from keda_proxy.model import EndpointSlice, ServiceEndpoints


def service_endpoints(slices: Iterable[EndpointSlice]) -> ServiceEndpoints:
    """Ready ``(ip, port)`` pairs by port name, over all slices of a Service.

    Each address is paired only with ports of its own slice: during a rolling
    deploy two slices may give the same port name different numbers.
    Duplicates across slices are dropped and the order is stable (sorted), so
    two rebuilds from the same slices give equal values.
    """
    seen: Dict[str, set] = {}
    by_name: Dict[str, List[Tuple[str, int]]] = {}
    for s in slices:
        ready = [a for ep in s.endpoints if ep.is_ready for a in ep.addresses]
        if not ready:
            continue
        for p in s.ports:
            bucket = seen.setdefault(p.name, set())
            for ip in ready:
                pair = (ip, p.port)
                if pair not in bucket:
                    bucket.add(pair)
                    by_name.setdefault(p.name, []).append(pair)
    candidates = {name: tuple(sorted(pairs)) for name, pairs in by_name.items()}
    ready = any(candidates.values()) or _has_ready_address(slices)
    return ServiceEndpoints(ready=ready, candidates=candidates)


def _has_ready_address(slices) -> bool:
    return any(ep.is_ready and ep.addresses for s in slices for ep in s.endpoints)
