"""
Cluster state as the request path sees it: the values routing plugins,
request steps and tests handle, exported here; sources and the store's
workings stay in the private modules.
"""

from keda_proxy.state._model import (
    ConfigMap,
    EndpointSlice,
    HeaderMatch,
    RequestFacts,
    Route,
    RoutingRule,
    Service,
    ServiceRef,
    StaticResponse,
    StaticRoute,
)
from keda_proxy.state._store import Snapshot, StateStore

__all__ = ["ConfigMap", "EndpointSlice", "HeaderMatch", "RequestFacts", "Route", "RoutingRule",
           "Service", "ServiceRef", "Snapshot", "StateStore", "StaticResponse", "StaticRoute"]
