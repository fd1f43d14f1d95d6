"""
The state store: sources put parsed objects in, readers get snapshots out.

Only the reactor thread calls into the store.  A change after a quiet
spell is applied on the next reactor turn; a burst that follows is
coalesced into one rebuild per few milliseconds; the rebuild makes a
new immutable L{Snapshot} and swaps the reference, so a request that holds
the old snapshot keeps a consistent view and nobody locks.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Dict, Mapping, Optional

from attrs import define, field, frozen
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IStateSink
from keda_proxy.state._endpoints import service_endpoints
from keda_proxy.state._model import (
    ALL_KINDS,
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    NO_ENDPOINTS,
    ConfigMap,
    Route,
    Service,
    ServiceEndpoints,
)
from keda_proxy.state._routing import RoutingTable

log = Logger()

_EMPTY: Mapping = MappingProxyType({})


@frozen
class Snapshot:
    """Everything the request path reads, as of one moment."""

    #: ``namespace/name`` -> Route, InterceptorRoutes winning over
    #: HTTPScaledObjects of the same name.
    routes: Mapping[str, Route] = _EMPTY
    table: RoutingTable = field(factory=lambda: RoutingTable.build(()))
    services: Mapping[str, Service] = _EMPTY
    endpoints: Mapping[str, ServiceEndpoints] = _EMPTY
    configmaps: Mapping[str, ConfigMap] = _EMPTY
    #: True once every expected kind has been listed at least once.
    synced: bool = False
    #: Increases by one with every swap; handy for tests and logs.
    generation: int = 0

    def endpoints_for(self, service_key: str) -> ServiceEndpoints:
        return self.endpoints.get(service_key, NO_ENDPOINTS)


def merge_routes(irs: Mapping[str, Route], hsos: Mapping[str, Route]) -> Dict[str, Route]:
    """InterceptorRoutes plus the HTTPScaledObjects no InterceptorRoute shadows."""
    merged = dict(hsos)
    merged.update(irs)
    return merged


@implementer(IStateSink)
@define
class StateStore:
    """Holds the current L{Snapshot} and rebuilds it when sources change it.

    @ivar clock: an C{IReactorTime}, used to coalesce bursts of changes.
    @ivar expected_kinds: the kinds that must be listed before the snapshot
        counts as synced (and /readyz turns 200).
    @ivar coalesce: seconds to wait for more changes before rebuilding.
    """

    clock: object
    expected_kinds: frozenset = frozenset(ALL_KINDS)
    coalesce: float = 0.005
    current: Snapshot = field(factory=Snapshot)
    _objects: Dict[str, Dict[str, object]] = field(
        factory=lambda: {k: {} for k in ALL_KINDS})
    _slices_by_service: Dict[str, Dict[str, object]] = field(factory=dict)
    _synced_kinds: set = field(factory=set)
    _dirty_kinds: set = field(factory=set)
    _dirty_services: set = field(factory=set)
    _pending: Optional[object] = None
    _last_rebuild: float = float("-inf")
    _listeners: list = field(factory=list)

    # -- IStateSink -------------------------------------------------------

    def replace(self, kind: str, objects: Mapping[str, object]) -> None:
        if kind == KIND_ENDPOINT_SLICE:
            for key in list(self._objects[kind]):
                if key not in objects:
                    self._unindex_slice(key)
            for key, obj in objects.items():
                self._index_slice(key, obj)
        self._objects[kind] = dict(objects)
        self._synced_kinds.add(kind)
        self._changed(kind)

    def put(self, kind: str, key: str, obj: object) -> None:
        if kind == KIND_ENDPOINT_SLICE:
            self._index_slice(key, obj)
        self._objects[kind][key] = obj
        self._changed(kind)

    def remove(self, kind: str, key: str) -> None:
        if key not in self._objects[kind]:
            return
        if kind == KIND_ENDPOINT_SLICE:
            self._unindex_slice(key)
        del self._objects[kind][key]
        self._changed(kind)

    # -- readers ----------------------------------------------------------

    def subscribe(self, listener: Callable[[Snapshot, Snapshot], None]) -> None:
        """Call C{listener(old, new)} after every swap, on the reactor thread."""
        self._listeners.append(listener)

    def objects(self, kind: str) -> Mapping[str, object]:
        """A read-only view of the raw parsed objects of one kind."""
        return MappingProxyType(self._objects[kind])

    def flush(self) -> Snapshot:
        """Rebuild now if anything changed; return the current snapshot."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._dirty_kinds:
            self._rebuild()
        return self.current

    # -- internals --------------------------------------------------------

    def _index_slice(self, key, slice_):
        old = self._objects[KIND_ENDPOINT_SLICE].get(key)
        if old is not None and old.service_key != slice_.service_key:
            self._unindex_slice(key)
        self._slices_by_service.setdefault(slice_.service_key, {})[key] = slice_
        self._dirty_services.add(slice_.service_key)

    def _unindex_slice(self, key):
        old = self._objects[KIND_ENDPOINT_SLICE].get(key)
        if old is None:
            return
        group = self._slices_by_service.get(old.service_key, {})
        group.pop(key, None)
        if not group:
            self._slices_by_service.pop(old.service_key, None)
        self._dirty_services.add(old.service_key)

    def _changed(self, kind: str) -> None:
        self._dirty_kinds.add(kind)
        if self._pending is None or not self._pending.active():
            # The first change after a quiet spell is applied on the next
            # reactor turn (a pod turning ready should not wait); changes
            # that follow within C{coalesce} of a rebuild wait for the rest
            # of the window and are applied together.
            now = self.clock.seconds()
            delay = max(0.0, self._last_rebuild + self.coalesce - now)
            self._pending = self.clock.callLater(delay, self.flush)

    def _rebuild(self) -> None:
        self._last_rebuild = self.clock.seconds()
        old = self.current
        dirty, self._dirty_kinds = self._dirty_kinds, set()
        routes, table = old.routes, old.table
        if dirty & {KIND_INTERCEPTOR_ROUTE, KIND_HTTP_SCALED_OBJECT}:
            routes = MappingProxyType(merge_routes(
                self._objects[KIND_INTERCEPTOR_ROUTE],
                self._objects[KIND_HTTP_SCALED_OBJECT]))
            table = RoutingTable.build(routes.values())
        services = old.services
        if KIND_SERVICE in dirty:
            services = MappingProxyType(dict(self._objects[KIND_SERVICE]))
        configmaps = old.configmaps
        if KIND_CONFIG_MAP in dirty:
            configmaps = MappingProxyType(dict(self._objects[KIND_CONFIG_MAP]))
        endpoints = old.endpoints
        if self._dirty_services:
            updated = dict(old.endpoints)
            for svc in self._dirty_services:
                slices = self._slices_by_service.get(svc)
                if slices:
                    updated[svc] = service_endpoints(slices.values())
                else:
                    updated.pop(svc, None)
            self._dirty_services = set()
            endpoints = MappingProxyType(updated)
        self.current = Snapshot(
            routes=routes,
            table=table,
            services=services,
            endpoints=endpoints,
            configmaps=configmaps,
            synced=self.expected_kinds <= self._synced_kinds,
            generation=old.generation + 1,
        )
        for listener in list(self._listeners):
            try:
                listener(old, self.current)
            except Exception:
                log.failure("snapshot listener {listener!r} failed", listener=listener)

