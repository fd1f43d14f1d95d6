"""
Testing plugins against the interceptor's real request path, in memory.

L{ProxyHarness} wires the same components the interceptor runs (routing,
request steps, counting, cold-start hold, forwarding, the upstream pool)
with every upstream connection dialled to an in-memory
C{twisted.web.server.Site} serving a resource of the test's, and a
C{treq.testing.StubTreq} in front of them: a test sends requests with
C{harness.treq}, with no socket and no reactor running::

    harness = ProxyHarness(MyBackend(), request_steps=[MyPlugin()])
    response = harness.result_of(harness.treq.get("http://example.com/"))
    assert response.code == 401
    assert harness.queue()["default/web"]["RequestCount"] == 0

Time stands still unless the test moves C{harness.clock} on.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.server import Site

from keda_proxy._app import Interceptor
from keda_proxy.downstream._resource import ReverseProxy
from keda_proxy.ops._config import load_config
from keda_proxy.state._manifests import ManifestSource
from keda_proxy.state._model import (
    ALL_KINDS,
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Route,
    RoutingRule,
    Service,
    ServicePort,
    ServiceRef,
)

#: the address every route's pods have: all of them are the one backend
POD_IP = "10.0.0.1"

#: the listeners are not used: requests come in through L{ProxyHarness.treq}
_PORTS = {"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0"}


def simple_route(*hosts: str, name: str = "web", namespace: str = "default",
                 **fields) -> Route:
    """A route C{namespace/name} for C{hosts}, to the Service C{name} (its
    C{http} port); other keywords are L{Route} fields (C{static_routes},
    C{timeouts}...)."""
    return Route(namespace=namespace, name=name,
                 target=ServiceRef(name=name, port_name="http"),
                 rules=(RoutingRule(hosts=tuple(hosts)),), **fields)


class ProxyHarness:
    """The request path in memory, in front of one backend resource.

    @ivar treq: a C{StubTreq}: C{get}, C{post}, C{content}, C{json_content}...
    @ivar clock: the C{MemoryReactorClock} the request path runs on.
    @ivar interceptor: the wired components (C{store}, C{counter}, C{pipeline}).
    @ivar dials: the upstream address of every connection made, in order.
    """

    def __init__(self, backend, *, routes: Optional[Iterable[Route]] = None,
                 manifests: Optional[str] = None, ready: bool = True,
                 request_steps=(), routing_plugins=(),
                 environ: Optional[Mapping[str, str]] = None):
        """
        @param backend: the twisted.web resource every upstream request reaches.
        @param routes: L{Route}s, each given a Service and an EndpointSlice
            (its pods ready unless C{ready} is false: scaled to zero); by
            default one route for C{example.com}.
        @param manifests: a file or folder of manifests to read instead.
        @param request_steps: L{keda_proxy.interfaces.IRequestStepPlugin}s,
            in order.
        @param routing_plugins: L{keda_proxy.interfaces.IRoutingPlugin}s.
        @param environ: settings by their environment variable names, such
            as C{{"KEDA_HTTP_REQUEST_TIMEOUT": "1s"}}.
        """
        self.clock = MemoryReactorClock()
        self.backend_site = Site(backend, reactor=self.clock)
        self.dials = []
        self._pumps = []
        config = load_config({**_PORTS, **(environ or {})})
        self.interceptor = Interceptor.build(
            self.clock, config, ALL_KINDS,
            plugins=tuple(routing_plugins), request_steps=tuple(request_steps))
        self.interceptor.pool.endpoint_for = self._endpoint_for
        self.source = None
        if manifests is not None:
            self.source = ManifestSource(path=manifests, sink=self.interceptor.store,
                                         clock=self.clock)
            self.source.startService()  # reads the files now
            self.interceptor.store.flush()
        else:
            self.set_routes(routes or [simple_route("example.com")], ready)
        self.treq = StubTreq(ReverseProxy(self.interceptor.pipeline))
        self._flush_client = self.treq.flush
        self.treq.flush = self.flush

    def set_routes(self, routes: Iterable[Route], ready: bool = True) -> None:
        """Serve C{routes} from now on, with ready pods or with none."""
        routes = list(routes)
        targets = {(r.namespace, r.target) for r in routes}
        services = [Service(namespace=ns, name=t.name, cluster_ip=POD_IP,
                            ports=(ServicePort(t.port_name or "http", t.port or 80),))
                    for ns, t in targets]
        slices = [EndpointSlice(namespace=s.namespace, name=f"{s.name}-1", service_name=s.name,
                                endpoints=(Endpoint(addresses=(POD_IP,), ready=ready),),
                                ports=tuple(EndpointPort(p.name, p.port) for p in s.ports))
                  for s in services]
        store = self.interceptor.store
        for kind, objects in ((KIND_INTERCEPTOR_ROUTE, routes), (KIND_HTTP_SCALED_OBJECT, ()),
                              (KIND_SERVICE, services), (KIND_ENDPOINT_SLICE, slices),
                              (KIND_CONFIG_MAP, ())):
            store.replace(kind, {o.key: o for o in objects})
        store.flush()

    def queue(self) -> dict:
        """What C{/queue} would answer now: route key -> C{Concurrency},
        C{RequestCount}."""
        return self.interceptor.counter.as_json_dict()

    def flush(self) -> None:
        """Deliver every byte in flight, both sides, until nothing moves."""
        moved = True
        while moved:
            self._flush_client()
            moved = any([pump.flush() for pump in self._pumps])
        self._pumps = [p for p in self._pumps
                       if not (p.clientIO.disconnected and p.serverIO.disconnected)]

    def result_of(self, deferred):
        """C{deferred}'s result once everything in flight is delivered
        (raised if it is a failure); C{deferred} keeps it.

        @raise AssertionError: it has none yet (it may wait on L{clock}).
        """
        self.flush()
        results = []
        deferred.addBoth(lambda result: results.append(result) or result)
        if not results:
            raise AssertionError(f"{deferred!r} has no result yet")
        if isinstance(results[0], Failure):
            deferred.addErrback(lambda _: None)  # raised here: handled
            results[0].raiseException()
        return results[0]

    def _endpoint_for(self, key, budget):
        return _Dial(self, key)


class _Dial:
    """An endpoint whose connections reach the backend site in memory."""

    def __init__(self, harness: ProxyHarness, key):
        self._harness = harness
        self._key = key

    def connect(self, factory):
        harness = self._harness
        harness.dials.append(f"{self._key[1]}:{self._key[2]}")
        proxy_side = IPv4Address("TCP", "127.0.0.1", 40000 + len(harness.dials))
        pod = IPv4Address("TCP", POD_IP, self._key[2])
        server = harness.backend_site.buildProtocol(proxy_side)
        client = factory.buildProtocol(pod)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, hostAddress=pod, peerAddress=proxy_side),
            client, iosim.FakeTransport(client, False, hostAddress=proxy_side, peerAddress=pod),
            greet=False, clock=harness.clock)
        harness._pumps.append(pump)
        return succeed(client)


__all__ = ["POD_IP", "ProxyHarness", "simple_route"]
