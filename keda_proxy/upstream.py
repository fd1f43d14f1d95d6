"""
Reaching upstreams: name resolution and dialling with retries.

The proxy addresses an upstream as ``<service>.<namespace>:<port>`` (or a
pod's ``ip:port``).  The pool (L{keda_proxy.pool}) keys connections on
``(scheme, host, port, server_name)``; L{UpstreamEndpoints} decides where
the TCP connection actually goes:

 - an IP literal is dialled directly (no DNS, no thread);
 - a name is first offered to the injected L{IServiceResolver} (by default
   the Service's ClusterIP from the snapshot, which is what cluster DNS
   would answer), and only then to the system resolver.

Every dial is retried every 50 ms with a per-attempt timeout until the
request's dial budget runs out, as KEDA's interceptor does: right after a
scale-from-zero the address may refuse or drop connections for a moment.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Optional

from attrs import define, field
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import Interface, implementer

from keda_proxy.store import StateStore

#: Go's retry interval between dial attempts.
RETRY_INTERVAL = 0.05
#: Go's cap on dial retries when the request has no deadline.
MAX_RETRY_DURATION = 60.0


class IServiceResolver(Interface):
    """Maps an upstream host name to an IP address without blocking."""

    def resolve(host):
        """
        @param host: a host name such as C{"svc.ns"}.
        @return: an IP address string, or L{None} to fall back to DNS.
        """


def ip_version(host: str) -> Optional[int]:
    """4 or 6 for an IP literal, None for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


@implementer(IServiceResolver)
@define
class SnapshotResolver:
    """Resolve ``svc.ns`` (and ``svc.ns.svc[.cluster.local]``) to the
    Service's ClusterIP as seen in the current snapshot.

    Headless Services (no ClusterIP) and unknown names return None, which
    sends the dial to DNS.
    """

    store: StateStore

    def resolve(self, host: str) -> Optional[str]:
        labels = host.rstrip(".").split(".")
        if len(labels) == 2 or labels[2:] in (["svc"], ["svc", "cluster", "local"]):
            svc = self.store.current.services.get(f"{labels[1]}/{labels[0]}")
            if svc is not None and ip_version(svc.cluster_ip):
                return svc.cluster_ip
        return None


@implementer(IServiceResolver)
@define
class StaticResolver:
    """A fixed name -> IP map; for tests and for pinning names by hand."""

    names: dict = field(factory=dict)

    def resolve(self, host: str) -> Optional[str]:
        return self.names.get(host)


@implementer(IStreamClientEndpoint)
@define
class RetryingEndpoint:
    """Dial through C{attempt()} endpoints until one connects or the budget
    runs out; the last failure is reported.

    Cancelling the returned Deferred stops the current attempt and any
    scheduled retry.
    """

    attempt: Callable[[], IStreamClientEndpoint]
    clock: object
    budget: float
    interval: float = RETRY_INTERVAL

    def connect(self, protocolFactory):
        deadline = self.clock.seconds() + self.budget
        state = {"inflight": None, "timer": None, "cancelled": False}

        def cancel(_):
            state["cancelled"] = True
            if state["timer"] is not None and state["timer"].active():
                state["timer"].cancel()
            if state["inflight"] is not None:
                state["inflight"].cancel()

        result = Deferred(cancel)

        def try_once():
            state["timer"] = None
            d = state["inflight"] = self.attempt().connect(protocolFactory)
            d.addCallbacks(connected, failed)

        def connected(proto):
            state["inflight"] = None
            result.callback(proto)

        def failed(f):
            state["inflight"] = None
            if state["cancelled"] or result.called:
                return None
            if self.clock.seconds() + self.interval < deadline:
                state["timer"] = self.clock.callLater(self.interval, try_once)
            else:
                result.errback(f)

        try_once()
        return result


@define
class UpstreamEndpoints:
    """Chooses the TCP (and, for https, TLS) endpoint for a pool key.

    C{endpoint_for((scheme, host, port, server_name), budget)} dials an IP
    literal directly, a name through the resolver or else DNS, retrying
    every 50 ms within C{budget} seconds.
    """

    reactor: object
    resolver: IServiceResolver
    connect_timeout: float = 0.5
    tls: object = None  # an L{keda_proxy.tls.UpstreamTLS} when upstreams are https

    def endpoint_for(self, key, budget: float):
        scheme, host, port, server_name = key
        target = host if ip_version(host) else self.resolver.resolve(host)
        tls = self.tls if scheme == b"https" else None
        if tls is not None:
            try:
                creator = tls.creator_for(server_name)
            except ValueError as e:  # no server name: fail closed, as a 502
                return _Refused(e)

        def attempt():
            if target is None:
                ep = HostnameEndpoint(self.reactor, host.encode("idna"), port,
                                      timeout=self.connect_timeout)
            else:
                cls = TCP6ClientEndpoint if ip_version(target) == 6 else TCP4ClientEndpoint
                ep = cls(self.reactor, target, port, timeout=self.connect_timeout)
            if tls is not None:
                ep = wrapClientTLS(creator, ep)
            return ep

        return RetryingEndpoint(attempt, self.reactor, budget)


@implementer(IStreamClientEndpoint)
@define
class _Refused:
    """An endpoint that will not dial (a TLS target without a name)."""

    error: Exception

    def connect(self, protocolFactory):
        return fail(self.error)


#: Connection and handshake errors worth a quiet 502 (anything else is a
#: 502 logged loudly, with its traceback).
CONNECT_ERRORS = (
    ierror.ConnectError,
    ierror.ConnectionRefusedError,
    ierror.TCPTimedOutError,
    ierror.TimeoutError,
    ierror.DNSLookupError,
    SSL.Error,
    VerificationError,
    ValueError,
)
