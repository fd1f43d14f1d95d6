"""
Reaching upstreams: name resolution and dialling with retries.

The proxy addresses an upstream as ``<service>.<namespace>:<port>`` (or a
pod's ``ip:port``).  The pool (L{keda_proxy.upstream._pool}) keys connections on
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
from typing import Callable, Dict, Optional

from attrs import define, field
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.interfaces import IServiceResolver
from keda_proxy.state._store import StateStore
from keda_proxy.upstream._schemes import HTTPS, HTTPS_HTTP1
from keda_proxy.wire._memo import remember

#: Go's retry interval between dial attempts.
RETRY_INTERVAL = 0.05
#: Go's cap on dial retries when the request has no deadline.
MAX_RETRY_DURATION = 60.0


def ip_version(host: str) -> Optional[int]:
    """4 or 6 for an IP literal, None for a name.  Remembered: the same pod
    and Service addresses are dialled over and over, and parsing one takes
    a good part of a dial."""
    version = _IP_VERSIONS.get(host, 0)
    if version == 0:
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            version = None
        remember(_IP_VERSIONS, host, version)
    return version


_IP_VERSIONS: Dict[str, Optional[int]] = {}


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


@define
class DialGate:
    """One probe at a time for an address that refuses connections.

    While an address refuses (a Service whose ClusterIP kube-proxy has not
    programmed yet, say), every held request re-dialling it every 50 ms
    would cost a core for a thousand requests.  Instead the requests queue
    here: every C{interval} one of them (the oldest) dials, and when a dial
    succeeds all the others go at once.  Addresses that answer cost nothing:
    no state is kept for them.
    """

    clock: object
    interval: float = RETRY_INTERVAL
    _refusing: Dict[object, "_Probe"] = field(factory=dict)

    def turn(self, address) -> Deferred:
        """Fires when the caller may dial C{address}: at once unless the
        address is refusing, else when a probe turn or a success comes."""
        probe = self._refusing.get(address)
        if probe is None:
            return succeed(None)
        d = Deferred(lambda d: probe.waiters.remove(d) if d in probe.waiters else None)
        probe.waiters.append(d)
        return d

    def refused(self, address) -> None:
        probe = self._refusing.get(address)
        if probe is None:
            probe = self._refusing[address] = _Probe()
        if probe.timer is None:
            probe.timer = self.clock.callLater(self.interval, self._next, address)

    def answered(self, address) -> None:
        probe = self._refusing.pop(address, None)
        if probe is not None:
            if probe.timer is not None and probe.timer.active():
                probe.timer.cancel()
            waiters, probe.waiters = probe.waiters, []
            for d in waiters:
                d.callback(None)

    def _next(self, address) -> None:
        probe = self._refusing.get(address)
        if probe is None:
            return
        probe.timer = None
        if not probe.waiters:
            del self._refusing[address]  # nobody waits: forget it
            return
        probe.waiters.pop(0).callback(None)

    def refusing(self, address) -> bool:
        return address in self._refusing


@define
class _Probe:
    waiters: list = field(factory=list)
    timer: object = None


@implementer(IStreamClientEndpoint)
@define
class RetryingEndpoint:
    """Dial through C{attempt()} endpoints until one connects or the budget
    runs out; the last failure is reported.

    Retries go through the L{DialGate} of the address: a refusing address is
    probed by one request at a time, every 50 ms.  Cancelling the returned
    Deferred stops the current attempt and any wait for a retry.
    """

    attempt: Callable[[], IStreamClientEndpoint]
    clock: object
    budget: float
    gate: Optional[DialGate] = None
    address: object = None

    def connect(self, protocolFactory):
        gate = self.gate or DialGate(self.clock)
        state = {"inflight": None, "waiting": None, "cancelled": False,
                 "expired": False, "last": None}

        def cancel(_):
            state["cancelled"] = True
            for key in ("waiting", "inflight"):
                if state[key] is not None:
                    state[key].cancel()
            if deadline is not None and deadline.active():
                deadline.cancel()

        result = Deferred(cancel)

        def out_of_time():
            state["expired"] = True
            if state["waiting"] is not None:  # not dialling now: give up
                state["waiting"].cancel()
                result.errback(state["last"] or Failure(ierror.TimeoutError(
                    string="no connection within the dial budget")))

        deadline = self.clock.callLater(self.budget, out_of_time) if self.budget > 0 else None

        def wait_turn():
            d = state["waiting"] = gate.turn(self.address)
            d.addCallbacks(try_once, lambda f: None)

        def try_once(_=None):
            state["waiting"] = None
            d = state["inflight"] = self.attempt().connect(protocolFactory)
            d.addCallbacks(connected, failed)

        def connected(proto):
            state["inflight"] = None
            gate.answered(self.address)
            if deadline is not None and deadline.active():
                deadline.cancel()
            if result.called:  # cancelled meanwhile
                proto.transport.loseConnection()
            else:
                result.callback(proto)

        def failed(f):
            state["inflight"] = None
            if state["cancelled"] or result.called:
                return None
            state["last"] = f
            gate.refused(self.address)
            if deadline is None or state["expired"]:
                result.errback(f)
                return None
            wait_turn()

        if deadline is None:
            try_once()  # one attempt (a pod): no queueing behind a probe
        else:
            wait_turn()
        return result


@define
class UpstreamEndpoints:
    """Chooses the TCP (and, for https, TLS) endpoint for a pool key.

    The key's scheme (L{keda_proxy.upstream._schemes}) says whether TLS
    goes over the TCP connection, and which protocols ALPN offers.

    C{endpoint_for((scheme, host, port, server_name), budget)} dials an IP
    literal directly, a name through the resolver or else DNS, retrying
    every 50 ms within C{budget} seconds.
    """

    reactor: object
    resolver: IServiceResolver
    connect_timeout: float = 0.5
    #: an L{IPolicyForHTTPS} (L{keda_proxy.upstream._tls.UpstreamTLS}) when upstreams
    #: are https; its creator for the key's server name wraps the dial
    tls: object = None
    gate: DialGate = None
    #: pool key -> the L{DirectEndpoint} of a plain pod dial
    _direct: dict = field(factory=dict)

    def __attrs_post_init__(self):
        if self.gate is None:
            self.gate = DialGate(self.reactor)

    def endpoint_for(self, key, budget: float):
        if budget <= 0:
            # a pod (one attempt): its plain TCP endpoint, made once; a cold
            # start dials the same pod tens of times in a few turns
            direct = self._direct.get(key)
            if direct is not None:
                return direct
        scheme, host, port, server_name = key
        literal = ip_version(host) is not None
        target = host if literal else self.resolver.resolve(host)
        tls = self.tls if scheme == HTTPS or scheme == HTTPS_HTTP1 else None
        if tls is not None:
            try:
                if scheme == HTTPS:
                    creator = tls.creatorForNetloc(server_name, port)
                else:
                    creator = tls.creator_http1(server_name)
            except ValueError as e:  # no or no valid server name: fail closed, a 502
                return _Refused(e)

        if target is None:
            def attempt():
                ep = HostnameEndpoint(self.reactor, host.encode("idna"), port,
                                      timeout=self.connect_timeout)
                return ep if tls is None else wrapClientTLS(creator, ep)
        else:
            direct = DirectEndpoint(self.reactor, target, port, self.connect_timeout,
                                    creator if tls is not None else None)

            def attempt():
                return direct

            if budget <= 0:
                # one attempt (a pod): nothing to retry or queue
                if tls is None and literal:  # a name may resolve elsewhere later
                    remember(self._direct, key, direct, _DIRECT_LIMIT)
                return direct

        return RetryingEndpoint(attempt, self.reactor, budget, self.gate,
                                (target or host, port))


@implementer(IStreamClientEndpoint)
@define
class DirectEndpoint:
    """C{connectTCP} to an IP literal, with no wrapping protocol.

    Twisted's client endpoints put a protocol between the transport and the
    caller's, to learn when it is connected; that costs a call on every
    read for the life of a pooled connection, and two Deferreds and a
    factory per dial.  Here the caller's protocol says so itself: it must
    have a C{connected_callback} attribute and call it, with itself, from
    C{connectionMade} (L{keda_proxy.upstream._http1client.UpstreamConnection} does).
    With C{creator}, TLS is layered under it as C{wrapClientTLS} would.
    """

    reactor: object
    host: str
    port: int
    timeout: float
    creator: object = None

    def connect(self, protocolFactory):
        notifying = _NotifyingFactory(protocolFactory)
        factory = notifying
        if self.creator is not None:
            factory = TLSMemoryBIOFactory(self.creator, True, notifying)
        connector = None

        def cancel(d):
            if connector is not None:
                try:
                    connector.stopConnecting()
                except ierror.NotConnectingError:
                    pass

        # the Deferred exists before the dial: it may fire before the dial
        # returns (a connection established at once, see connect_at_once)
        d = notifying.deferred = Deferred(cancel)
        dial = getattr(self.reactor, "connect_at_once", None) or self.reactor.connectTCP
        connector = dial(self.host, self.port, factory, timeout=self.timeout)
        return d


class _NotifyingFactory(ClientFactory):
    """Builds the caller's protocol and fires C{deferred} once it is
    connected (see L{DirectEndpoint})."""

    noisy = False
    deferred: Deferred = None

    def __init__(self, factory):
        self.factory = factory

    def buildProtocol(self, addr):
        proto = self.factory.buildProtocol(addr)
        if hasattr(proto, "connected_callback"):
            proto.connected_callback = self._connected
        else:  # any other protocol: learn of the connection from makeConnection
            make = proto.makeConnection

            def makeConnection(transport):
                del proto.makeConnection
                make(transport)
                self._connected(proto)

            proto.makeConnection = makeConnection
        return proto

    def _connected(self, proto) -> None:
        d, self.deferred = self.deferred, None
        if d is None or d.called:  # cancelled while the connection completed
            proto.transport.loseConnection()
        else:
            d.callback(proto)

    def clientConnectionFailed(self, connector, reason) -> None:
        d, self.deferred = self.deferred, None
        if d is not None and not d.called:
            d.errback(reason)


@implementer(IStreamClientEndpoint)
@define
class _Refused:
    """An endpoint that will not dial (a TLS target without a name)."""

    error: Exception

    def connect(self, protocolFactory):
        return fail(self.error)


#: plain pod endpoints kept (L{UpstreamEndpoints.endpoint_for})
_DIRECT_LIMIT = 1024


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
