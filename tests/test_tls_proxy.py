"""
TLS end to end: a client speaks TLS to the interceptor's TLS listener,
which forwards over TLS to a pod reached by IP, verifying the pod's
certificate against the Service hostname (SNI from the route, not the
address).  Certificates are made at test time.
"""

import json

import attrs
import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor, ssl
from twisted.web import resource, server

from keda_proxy._app import Interceptor
from keda_proxy.downstream._tls import ServerTLS
from keda_proxy.state._model import ALL_KINDS, ServiceRef
from keda_proxy.upstream._dial import StaticResolver
from keda_proxy.upstream._tls import UpstreamTLS
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import RawClient, wait_for
from tests.test_tls import config, write_pair


class Hello(resource.Resource):
    isLeaf = True

    def render(self, request):
        return json.dumps({"host": request.getHeader(b"host").decode(),
                           "secure": request.isSecure()}).encode()


class QuietSite(server.Site):
    connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)

    def log(self, request):
        pass


@pytest.fixture
def rig(tmp_path, ca):
    listening = []

    sites = []

    def pod(name):
        cert = ca.issue_cert(name)
        ctx = ssl.PrivateCertificate.loadPEM(
            cert.cert_chain_pems[0].bytes() + cert.private_key_pem.bytes()).options()
        sites.append(QuietSite(Hello()))
        port = reactor.listenSSL(0, sites[-1], ctx, interface="127.0.0.1")
        listening.append(port)
        return port.getHost().port

    cert_path, key_path = write_pair(tmp_path / "certs", "tls",
                                     ca.issue_cert("proxy.example"), with_ca=ca)
    cfg = config(tls_cert_path=cert_path, tls_key_path=key_path)

    def start(direct_pod_routing=True, pod_name="web.default", fallback_name=None,
              ready=True):
        good = pod(pod_name)
        start.pod_site = sites[-1]
        c = attrs.evolve(cfg, direct_pod_routing=direct_pod_routing,
                         direct_pod_warm_connections=0 if ready else 64)
        ic = Interceptor.build(reactor, c, ALL_KINDS, plugins=(),
                               resolver=StaticResolver({"web.default": "127.0.0.1",
                                                        "backup.default": "127.0.0.1"}),
                               dial_budget=0.3, upstream_tls=UpstreamTLS.from_config(c))
        routes = [route(hosts=["web.example"])]
        services = [service(ports=(("http", good),))]
        slices = [endpoint_slice(ports=(("http", good),), ready=ready)]
        start.ready_state = dict(routes=routes, services=services,
                                 slices=[endpoint_slice(ports=(("http", good),))])
        if fallback_name is not None:
            fb = pod(fallback_name)
            routes = [route(hosts=["web.example"], fallback=ServiceRef(name="backup", port=fb),
                            timeouts=attrs.evolve(routes[0].timeouts, readiness=0.2))]
            slices = []
        load(ic.store, routes=routes, services=services, slices=slices)
        port = reactor.listenSSL(0, ic.tls_proxy_site(), ServerTLS.from_config(c),
                                 interface="127.0.0.1")
        listening.append(port)
        return ic, port.getHost().port

    yield start
    for p in listening:
        pytest_twisted.blockon(p.stopListening())


@pytest_twisted.inlineCallbacks
def _get(port, ca, host=b"web.example"):
    client_ctx = ssl.optionsForClientTLS(
        "proxy.example", trustRoot=ssl.Certificate.loadPEM(ca.cert_pem.bytes()))
    from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

    proto = yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port, client_ctx),
                                  RawClient())
    proto.transport.write(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    yield wait_for(lambda: proto.lost.called, timeout=10, what="response")
    return proto.received


@pytest_twisted.inlineCallbacks
def test_tls_to_a_pod_ip_verifies_the_service_name(rig, ca):
    ic, port = rig(direct_pod_routing=True)
    raw = yield _get(port, ca)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body == {"host": "web.example", "secure": True}
    [(scheme, host, _, server_name)] = list(ic.pool._idle)
    assert (scheme, host, server_name) == (b"https", "127.0.0.1", "web.default")


@pytest_twisted.inlineCallbacks
def test_pod_certificate_for_another_name_is_502(rig, ca):
    ic, port = rig(direct_pod_routing=True, pod_name="evil.default")
    raw = yield _get(port, ca)
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")


@pytest_twisted.inlineCallbacks
def test_fallback_uses_the_fallback_service_name(rig, ca):
    ic, port = rig(direct_pod_routing=False, pod_name="web.default",
                   fallback_name="backup.default")
    raw = yield _get(port, ca)
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw[:200]


@pytest_twisted.inlineCallbacks
def test_tls_connections_opened_while_the_pod_starts_verify_the_service_name(rig, ca):
    """Warm connections to a starting pod do their TLS handshake, with the
    Service's name, before the pod is ready; the request then uses one."""
    ic, port = rig(direct_pod_routing=True, ready=False)
    site = rig.pod_site
    got = _get(port, ca)
    yield wait_for(lambda: ic.gate.waiting() == 1, what="request held")
    yield wait_for(lambda: site.connections == 1 and ic.pool.idle_count() == 1,
                   what="a warm connection")
    load(ic.store, **rig.ready_state)
    raw = yield got
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert site.connections == 1  # no dial after the pod turned ready


@pytest_twisted.inlineCallbacks
def test_warm_connections_to_a_pod_with_the_wrong_certificate_are_not_retried_in_a_loop(
        rig, ca):
    ic, port = rig(direct_pod_routing=True, pod_name="evil.default", ready=False)
    site = rig.pod_site
    got = [_get(port, ca) for _ in range(20)]
    yield wait_for(lambda: ic.gate.waiting() == 20, what="requests held")
    started, before = reactor.seconds(), site.connections
    yield wait_for(lambda: site.connections >= before + 4, what="more handshakes")
    # one attempt per 100 ms pass, not a refill to 20 on every pass: four
    # more take three passes after the one that may be under way
    assert reactor.seconds() - started >= 0.2
    load(ic.store, **rig.ready_state)
    for d in got:
        raw = yield d
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")


@pytest_twisted.inlineCallbacks
def test_pod_signed_by_a_ca_only_in_a_ca_dir_is_trusted(tmp_path, ca):
    """KEDA_HTTP_TLS_CA_DIRS end to end: the pod's certificate is issued
    by a private CA that is in no certificate file, only in a CA folder;
    through it the request is forwarded (200), without it refused (502)."""
    private_ca = trustme.CA()
    (tmp_path / "ca").mkdir()
    private_ca.cert_pem.write_to_path(str(tmp_path / "ca" / "ca.crt"))
    cert_path, key_path = write_pair(tmp_path / "certs", "tls",
                                     ca.issue_cert("proxy.example"), with_ca=ca)
    pod_cert = private_ca.issue_cert("web.default")
    pod_ctx = ssl.PrivateCertificate.loadPEM(
        pod_cert.cert_chain_pems[0].bytes() + pod_cert.private_key_pem.bytes()).options()
    listening = [reactor.listenSSL(0, QuietSite(Hello()), pod_ctx, interface="127.0.0.1")]
    pod_port = listening[0].getHost().port
    try:
        for ca_dirs, status in [((str(tmp_path / "ca"),), b"200 OK"), ((), b"502 Bad Gateway")]:
            c = config(tls_cert_path=cert_path, tls_key_path=key_path, tls_ca_dirs=ca_dirs)
            ic = Interceptor.build(reactor, c, ALL_KINDS, plugins=(),
                                   resolver=StaticResolver({"web.default": "127.0.0.1"}),
                                   dial_budget=0.3, upstream_tls=UpstreamTLS.from_config(c))
            load(ic.store, routes=[route(hosts=["web.example"])],
                 services=[service(ports=(("http", pod_port),))],
                 slices=[endpoint_slice(ports=(("http", pod_port),))])
            listening.append(reactor.listenSSL(0, ic.tls_proxy_site(), ServerTLS.from_config(c),
                                               interface="127.0.0.1"))
            raw = yield _get(listening[-1].getHost().port, ca)
            assert raw.startswith(b"HTTP/1.1 " + status), (ca_dirs, raw[:200])
            if status == b"200 OK":
                body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
                assert body == {"host": "web.example", "secure": True}
    finally:
        for p in listening:
            yield p.stopListening()
