"""
Assembling the interceptor: one L{Interceptor} holds every component, and
L{InterceptorService} runs its listeners and sources under twistd.
"""

from __future__ import annotations

import errno
import gc
import socket
from typing import Callable, Optional

import attrs
from attrs import define
from twisted.application.service import MultiService, Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from keda_proxy.downstream import HTTP1ServerFactory
from keda_proxy.ops._admin import admin_root
from keda_proxy.ops._adminsite import AdminSite
from keda_proxy.ops._config import Config
from keda_proxy.ops._metrics import ProxyMetrics, metrics_root
from keda_proxy.ops._tracing import SpanExporter, Tracer, exporter_for
from keda_proxy.state._store import StateStore
from keda_proxy.steps import Pipeline, ProxySettings
from keda_proxy.steps._counting import QueueCounter
from keda_proxy.steps._pluginrouting import PluginRouter, discover_routing_plugins
from keda_proxy.steps._pluginsteps import request_steps_named
from keda_proxy.steps._readiness import ReadinessGate
from keda_proxy.steps._selection import selector_named
from keda_proxy.upstream._dial import MAX_RETRY_DURATION, SnapshotResolver, UpstreamEndpoints
from keda_proxy.upstream._pool import ConnectionPool
from keda_proxy.upstream._prewarm import PodWarmer

log = Logger()


def settings_from_config(config: Config, dial_budget: float = MAX_RETRY_DURATION
                         ) -> ProxySettings:
    return ProxySettings(
        request_timeout=config.request_timeout,
        response_header_timeout=config.response_header_timeout,
        readiness_timeout=config.readiness_timeout,
        enable_cold_start_header=config.enable_cold_start_header,
        direct_pod_routing=config.direct_pod_routing,
        cold_start_max_pending_requests=config.cold_start_max_pending_requests,
        upstream_tls=False,
        dial_budget=dial_budget,
    )


@define
class Interceptor:
    """Every long-lived component, wired together; no sockets yet."""

    reactor: object
    config: Config
    store: StateStore
    counter: QueueCounter
    gate: ReadinessGate
    pool: object
    pipeline: Pipeline
    metrics: ProxyMetrics
    #: opens pod connections while requests are held (direct-pod routing)
    warmer: Optional[PodWarmer] = None
    draining: bool = False

    @classmethod
    def build(cls, reactor, config: Config, expected_kinds, resolver=None,
              plugins=None, dial_budget: float = MAX_RETRY_DURATION,
              upstream_tls=None, request_steps=None) -> "Interceptor":
        """Wire every component.

        @param upstream_tls: a L{keda_proxy.upstream.UpstreamTLS}, needed for the
            TLS listener, whose requests go upstream over https (as in Go).
        @param request_steps: L{keda_proxy.interfaces.IRequestStepPlugin}s to
            run, in order; None: those C{config.request_steps} names.
        """
        store = StateStore(clock=reactor, expected_kinds=frozenset(expected_kinds))
        counter = QueueCounter()

        def follow_routes(old, new):
            if old.routes is not new.routes:
                counter.sync_keys(new.routes.keys())

        store.subscribe(follow_routes)
        gate = ReadinessGate(store, selector=selector_named(config.endpoint_selector))
        endpoints = UpstreamEndpoints(reactor, resolver or SnapshotResolver(store),
                                      config.connect_timeout, tls=upstream_tls)
        pool = ConnectionPool(reactor, endpoints.endpoint_for,
                              max_idle=config.max_idle_conns,
                              max_idle_per_host=config.max_idle_conns_per_host)
        if plugins is None:
            plugins = discover_routing_plugins()
        for p in plugins:
            log.info("routing plugin {name} loaded", name=getattr(p, "name", repr(p)))
        if request_steps is None:
            request_steps = request_steps_named(config.request_steps)
        for p in request_steps:
            log.info("request step plugin {name} enabled", name=getattr(p, "name", repr(p)))
        if config.direct_pod_routing and config.direct_pod_warm_connections > 0:
            warmer = PodWarmer(reactor, store, gate, pool,
                               per_pod=config.direct_pod_warm_connections)
        else:
            warmer = None
        metrics = ProxyMetrics(reactor, counter)
        pipeline = Pipeline(
            clock=reactor,
            store=store,
            router=PluginRouter.with_plugins(store, plugins),
            counter=counter,
            gate=gate,
            pool=pool,
            settings=settings_from_config(config, dial_budget),
            metrics=metrics,
            log_requests=config.log_requests,
            tracer=Tracer() if config.otlp_traces_enabled else None,
            request_steps=tuple(request_steps),
        )
        return cls(reactor, config, store, counter, gate, pool, pipeline, metrics, warmer)

    def is_ready(self) -> bool:
        return self.store.current.synced and not self.draining

    def proxy_site(self) -> HTTP1ServerFactory:
        """The proxy listener's factory: each request goes down the pipeline
        as soon as its head is in."""
        return HTTP1ServerFactory(self.pipeline.serve, reactor=self.reactor)

    def tls_proxy_site(self) -> HTTP1ServerFactory:
        """The factory behind the TLS listener: same state, https upstreams."""
        settings = attrs.evolve(self.pipeline.settings, upstream_tls=True)
        pipeline = attrs.evolve(self.pipeline, settings=settings)
        return HTTP1ServerFactory(pipeline.serve, reactor=self.reactor)

    def admin_site(self) -> AdminSite:
        return AdminSite(admin_root(self.counter, self.is_ready), reactor=self.reactor)

    def metrics_site(self) -> AdminSite:
        return AdminSite(metrics_root(self.metrics), reactor=self.reactor)


#: Young collections every 100,000 allocations instead of 700, and full
#: ones rarely: a burst of thousands of released requests otherwise spends
#: seconds walking the heap.  Cycles are rare on the request path (plain
#: reference counting frees it), so memory stays flat.
GC_THRESHOLDS = (100_000, 50, 1000)


def _freeze_after_first_sync():
    """Once the first full snapshot is in, move everything alive to the
    collector's permanent generation: the modules, routes and caches then
    stay out of every later full collection, which would otherwise stall
    the reactor for tens of milliseconds now and then."""
    done = []

    def listener(old, new):
        if new.synced and not done:
            done.append(True)
            gc.collect()
            gc.freeze()

    return listener


#: what binding a dual-stack socket fails with on a machine without IPv6
#: (no such family, or IPv6 switched off): the listener then takes IPv4 only
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL})


class ListenFailed(SystemExit, Exception):
    """A listener cannot listen: start-up stops with exit status 1.

    A C{SystemExit}, so that Python exits with status 1 and no traceback
    (the reason is logged, on one line; with C{echo}, for when logging has
    not begun, Python also prints it on stderr); an C{Exception} too, so
    that twistd's start-up handler still removes its PID file and tells a
    daemonizing parent why start-up failed."""

    def __init__(self, message: str, echo: bool = False) -> None:
        super().__init__(f"keda-interceptor: {message}" if echo else 1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _server(skt, protocol, client, port, sessionno, reactor):
    """The transport of an accepted connection.  An IPv4 client of a
    dual-stack socket is named by its IPv4 address, as Go names it, not as
    C{::ffff:a.b.c.d}: X-Forwarded-For and the access log read the same as
    on an IPv4 socket.  (The peer stays an C{IPv6Address}, as the socket's
    own address is; and the transport a plain L{tcp.Server}, the type the
    lean reactor reads inline.)"""
    host = client[0]
    if host.startswith("::ffff:") and "." in host:
        client = (host[7:], *client[1:])
    return tcp.Server(skt, protocol, client, port, sessionno, reactor)


class _Port(tcp.Port):
    """A listening TCP port whose IPv6 socket takes IPv4 clients too
    (IPV6_V6ONLY off, as Go sets it, whatever C{net.ipv6.bindv6only} says)."""

    transport = staticmethod(_server)

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            try:
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                skt.close()
                raise
        return skt


@define(slots=False, eq=False)
class Listener(Service):
    """Listens on TCP port C{number} while running: on every IPv4 and IPv6
    address (one dual-stack socket on C{::}, as Go makes of the Go
    interceptor's C{0.0.0.0:port}), on IPv4 only where the machine has no
    IPv6, or on C{interface} alone (C{::} means every address, as the
    default does).

    The port is bound in C{privilegedStartService}, before any service
    starts (or in C{startService} when nothing called that): if it cannot
    be, one line names the listener, the address and the reason, and
    L{ListenFailed} ends the process with status 1.  Remembers the port so
    tests and logs can learn an ephemeral port number.

    @ivar tls: an C{IOpenSSLServerConnectionCreator}: serve TLS.
    """

    reactor: object
    number: int
    factory: object
    name_: str
    interface: str = ""
    tls: Optional[object] = None
    port: Optional[object] = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._bind(echo=False)

    def startService(self):
        Service.startService(self)
        if self.port is None:
            # not under twistd: C{twist} starts services before it starts
            # logging, so a failure is told on stderr as well
            self._bind(echo=True)

    def _bind(self, echo: bool):
        factory = self.factory
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        try:
            if self.interface in ("", "::"):
                try:
                    port = self._listen(factory, "::")
                except CannotListenError as e:
                    if getattr(e.socketError, "errno", None) not in _NO_IPV6:
                        raise
                    port = self._listen(factory, "")
            else:
                port = self._listen(factory, self.interface)
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            message = f"{self.name_} listener: cannot listen on {self._where()}: {why}"
            log.error("{message}", message=message)
            raise ListenFailed(message, echo) from None
        self.port = port
        log.info("{name} listening on {addr}", name=self.name_, addr=port.getHost())

    def _listen(self, factory, interface: str):
        from keda_proxy.downstream._http1 import listen_backlog  # the kernel's limit, as Go's

        port = _Port(self.number, factory, backlog=listen_backlog(), interface=interface,
                     reactor=self.reactor)
        port.startListening()
        return port

    def _where(self) -> str:
        if self.interface in ("", "::"):
            return f"port {self.number} (all addresses)"
        return f"{self.interface} port {self.number}"

    def stopService(self):
        Service.stopService(self)
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        return port.stopListening()


@define(slots=False, eq=False)
class InterceptorService(MultiService):
    """The whole interceptor under twistd.

    Shutdown follows KEDA's: /readyz turns 503 at once, the proxy keeps
    serving for C{shutdown_delay} while Kubernetes removes the pod from its
    Services, then stops accepting, then waits up to C{drain_timeout} for
    requests in flight.
    """

    interceptor: Interceptor
    proxies: list = attrs.Factory(list)

    def __attrs_post_init__(self):
        MultiService.__init__(self)

    def stopService(self):
        ic = self.interceptor
        ic.draining = True
        clock = ic.reactor
        cfg = ic.config
        d = Deferred()
        clock.callLater(cfg.shutdown_delay, d.callback, None)

        def close_proxy(_):
            for p in self.proxies:  # from now on, responses close their connections
                p.factory.draining = True
            return gatherResults([p.stopService() for p in self.proxies if p.running])

        def drain(_):
            in_flight = ic.pipeline.in_flight
            return _wait_idle(clock, lambda: in_flight.count, cfg.drain_timeout)

        def rest(_):
            if ic.warmer is not None:
                ic.warmer.stop()
            ic.pool.close_idle()
            return MultiService.stopService(self)

        return d.addCallback(close_proxy).addCallback(drain).addCallback(rest)


def _wait_idle(clock, in_flight: Callable[[], int], timeout: float, step: float = 0.05):
    """Fire once C{in_flight()} is 0, or after C{timeout} (0: never give
    up, as Go's DrainTimeout 0 means)."""
    d = Deferred()
    start = clock.seconds()

    def check():
        busy = in_flight()
        if busy <= 0 or (timeout > 0 and clock.seconds() - start >= timeout):
            if busy > 0:
                log.warn("drain timeout: {n} requests still in flight", n=busy)
            d.callback(None)
        else:
            clock.callLater(step, check)

    check()
    return d


def build_service(reactor, config: Config, source_factory, interface: str = "",
                  server_tls=None, upstream_tls=None) -> InterceptorService:
    """The MultiService twistd runs.

    @param source_factory: called with the store, returns the source
        Service (manifest files or the Kubernetes API).
    @param interface: the one address every listener takes; empty (or
        C{::}) for all IPv4 and IPv6 addresses (see L{Listener}).
    @param server_tls: a L{keda_proxy.downstream._tls.ServerTLS}; with it, a second
        proxy listener serves TLS on C{proxy_tls_port}, and its certificate
        files are watched for rotation while the service runs.
    """
    from keda_proxy.state._model import ALL_KINDS

    ic = Interceptor.build(reactor, config, ALL_KINDS, upstream_tls=upstream_tls)
    ic.store.subscribe(_freeze_after_first_sync())
    gc.set_threshold(*GC_THRESHOLDS)
    svc = InterceptorService(ic)
    source_factory(ic.store).setServiceParent(svc)

    def listener(number, site, name, tls=None):
        return Listener(reactor, number, site, name, interface=interface, tls=tls)

    proxy = listener(config.proxy_port, ic.proxy_site(), "proxy")
    svc.proxies.append(proxy)
    proxy.setServiceParent(svc)
    if server_tls is not None:
        tls = listener(config.proxy_tls_port, ic.tls_proxy_site(), "TLS proxy", server_tls)
        svc.proxies.append(tls)
        tls.setServiceParent(svc)
        server_tls.watcher(reactor).setServiceParent(svc)
    listener(config.admin_port, ic.admin_site(), "admin").setServiceParent(svc)
    if config.prom_exporter_enabled:
        listener(config.prom_exporter_port, ic.metrics_site(), "metrics").setServiceParent(svc)
    if config.profiling_bind_address:
        # only where the variable says; ":6060" means the listeners' addresses
        from keda_proxy.ops._config import parse_bind_address
        from keda_proxy.ops._profiling import profiling_site

        host, port = parse_bind_address(config.profiling_bind_address)
        Listener(reactor, port, profiling_site(reactor), "profiling",
                 interface=host or interface).setServiceParent(svc)
    if ic.pipeline.tracer is not None or config.otlp_metrics_enabled:
        from keda_proxy.ops._sdklog import route_sdk_logging

        route_sdk_logging(reactor)
    if ic.pipeline.tracer is not None:
        SpanExporter(ic.pipeline.tracer, exporter_for(config.otlp_traces_protocol),
                     reactor).setServiceParent(svc)
    if config.otlp_metrics_enabled:
        from keda_proxy.ops import _otlpmetrics as otlpmetrics

        otlpmetrics.MetricsPusher(ic.metrics.registry, otlpmetrics.exporter_for(),
                                  reactor).setServiceParent(svc)
    return svc
