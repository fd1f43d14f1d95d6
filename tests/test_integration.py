"""
Integration tests over real loopback sockets: a real backend, the real
proxy and admin sites, a real HTTP client.  State is loaded into the store
directly; the manifest and Kubernetes sources have their own tests.
"""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks

from keda_proxy._app import Interceptor
from keda_proxy.ops._config import load_config
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.steps._selection import RandomSelector
from keda_proxy.upstream._dial import StaticResolver
from tests.builders import endpoint_slice, load, route, service
from tests.netsupport import Client, RawClient, free_port, start_backend, wait_for


class Rig:
    """Backend + interceptor on ephemeral loopback ports."""

    def start(self, env=None, dial_budget=0.3):
        self.backend, self.backend_port = start_backend()
        bp = self.backend_port.getHost().port
        environ = {"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0"}
        environ.update(env or {})
        self.config = load_config(environ)
        self.ic = Interceptor.build(
            reactor, self.config, ALL_KINDS, plugins=(),
            resolver=StaticResolver({"web.default": "127.0.0.1", "dead.default": "127.0.0.1"}),
            dial_budget=dial_budget)
        self.dead_port = free_port()
        self.proxy_port = reactor.listenTCP(0, self.ic.proxy_site(), interface="127.0.0.1")
        self.admin_port = reactor.listenTCP(0, self.ic.admin_site(), interface="127.0.0.1")
        self.client = Client()
        self.routes = [
            route(hosts=["web.example"]),
            route(name="dead", service="dead", hosts=["dead.example"]),
        ]
        self.services = [service(ports=(("http", bp),)),
                         service(name="dead", ports=(("http", self.dead_port),))]
        self.slices = [endpoint_slice(ports=(("http", bp),)),
                       endpoint_slice(service="dead", ports=(("http", self.dead_port),))]
        return self

    def load(self, **kw):
        args = dict(routes=self.routes, services=self.services, slices=self.slices)
        args.update(kw)
        load(self.ic.store, **args)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.proxy_port.getHost().port}{path}"

    def admin(self, path):
        return f"http://127.0.0.1:{self.admin_port.getHost().port}{path}"

    @inlineCallbacks
    def stop(self):
        yield self.client.close()
        self.ic.pool.close_idle()
        yield self.proxy_port.stopListening()
        yield self.admin_port.stopListening()
        yield self.backend_port.stopListening()


@pytest.fixture
def rig():
    r = Rig().start()
    yield r
    pytest_twisted.blockon(r.stop())


@pytest_twisted.inlineCallbacks
def test_forwards_with_host_preserved_and_forwarded_headers(rig):
    rig.load()
    resp = yield rig.client.http.post(rig.url("/a/b?c=1"), data=b"payload",
                                      headers={"Host": "web.example",
                                               "X-Forwarded-For": "203.0.113.9"})
    assert resp.code == 200
    body = json.loads((yield resp.content()))
    assert body["path"] == "/a/b?c=1"
    assert body["method"] == "POST"
    assert body["body"] == "payload"
    assert body["host"] == "web.example"
    assert body["xff"] == "203.0.113.9, 127.0.0.1"
    assert body["xfh"] == "web.example"
    assert body["xfp"] == "http"
    assert resp.headers.getRawHeaders("x-backend") == ["yes"]
    assert resp.headers.getRawHeaders("x-keda-http-cold-start") == ["false"]


@pytest_twisted.inlineCallbacks
def test_no_route_is_404(rig):
    rig.load()
    resp = yield rig.client.http.get(rig.url(), headers={"Host": "unknown.example"})
    assert resp.code == 404
    assert (yield resp.content()) == b"Not Found\n"


@pytest_twisted.inlineCallbacks
def test_refused_upstream_is_502_after_the_dial_budget(rig):
    rig.load()
    resp = yield rig.client.http.get(rig.url(), headers={"Host": "dead.example"})
    assert resp.code == 502
    assert (yield resp.content()) == b"Bad Gateway\n"
    queue = json.loads((yield (yield rig.client.http.get(rig.admin("/queue"))).content()))
    assert queue["default/dead"] == {"Concurrency": 0, "RequestCount": 1}


@pytest_twisted.inlineCallbacks
def test_response_header_timeout_is_504():
    rig = Rig().start(env={"KEDA_HTTP_RESPONSE_HEADER_TIMEOUT": "200ms"})
    try:
        rig.load()
        resp = yield rig.client.http.get(rig.url("/held"), headers={"Host": "web.example"})
        assert resp.code == 504
        assert (yield resp.content()) == b"Gateway Timeout\n"
    finally:
        for r in rig.backend.held:
            if not r._disconnected:
                r.finish()
        yield rig.stop()


@pytest_twisted.inlineCallbacks
def test_response_streams_and_queue_counts_while_in_flight(rig):
    rig.load()
    d = rig.client.http.get(rig.url("/held"), headers={"Host": "web.example"})
    yield wait_for(lambda: rig.backend.held, what="backend to get the request")
    queue = json.loads((yield (yield rig.client.http.get(rig.admin("/queue"))).content()))
    assert queue == {"default/dead": {"Concurrency": 0, "RequestCount": 0},
                     "default/web": {"Concurrency": 1, "RequestCount": 1}}
    held = rig.backend.held[0]
    held.setHeader(b"content-type", b"text/plain")
    held.write(b"first chunk\n")
    resp = yield d  # headers arrive while the backend is still sending
    chunks = []
    done = treq.collect(resp, chunks.append)
    yield wait_for(lambda: chunks, what="first chunk through the proxy")
    assert chunks == [b"first chunk\n"]
    assert not done.called
    held.write(b"second\n")
    held.finish()
    yield done
    assert b"".join(chunks) == b"first chunk\nsecond\n"
    yield wait_for(lambda: rig.ic.counter.get("default/web").concurrency == 0,
                   what="concurrency back to 0")


@pytest_twisted.inlineCallbacks
def test_client_disconnect_mid_stream_releases_everything(rig):
    rig.load()
    client = yield RawClient.connect(rig.proxy_port.getHost().port)
    client.transport.write(b"GET /held HTTP/1.1\r\nHost: web.example\r\n\r\n")
    yield wait_for(lambda: rig.backend.held, what="backend to get the request")
    held = rig.backend.held[0]
    held.write(b"partial")
    yield wait_for(lambda: b"partial" in client.received, what="first bytes at the client")
    client.transport.abortConnection()
    yield wait_for(lambda: rig.ic.counter.get("default/web").concurrency == 0,
                   what="concurrency back to 0")
    yield wait_for(lambda: held._disconnected, what="upstream connection dropped")


@pytest_twisted.inlineCallbacks
def test_upstream_connections_are_pooled(rig):
    rig.load()
    for _ in range(5):
        resp = yield rig.client.http.get(rig.url(), headers={"Host": "web.example"})
        yield resp.content()
    assert rig.backend.connections == 1


@pytest_twisted.inlineCallbacks
def test_readyz_turns_200_after_the_first_sync_and_livez_is_always_200(rig):
    live = yield rig.client.http.get(rig.admin("/livez"))
    assert live.code == 200
    before = yield rig.client.http.get(rig.admin("/readyz"))
    assert before.code == 503
    rig.load()
    after = yield rig.client.http.get(rig.admin("/readyz"))
    assert after.code == 200
    rig.ic.draining = True
    draining = yield rig.client.http.get(rig.admin("/readyz"))
    assert draining.code == 503


@pytest_twisted.inlineCallbacks
def test_cold_start_holds_until_endpoints_are_ready(rig):
    rig.load(slices=[])
    d = rig.client.http.get(rig.url(), headers={"Host": "web.example"})
    yield wait_for(lambda: rig.ic.gate.waiting("default/web") == 1, what="request held")
    assert rig.backend.seen == []
    rig.load()
    resp = yield d
    assert resp.code == 200
    assert resp.headers.getRawHeaders("x-keda-http-cold-start") == ["true"]
    yield resp.content()


def _ipv6_loopback() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest_twisted.inlineCallbacks
def test_direct_pod_cold_start_reaches_an_ipv6_pod_past_a_stale_one():
    """Held until the slice is ready, then sent to the pod's own address
    (IPv6, port from its slice), not the Service's; a stale pod that
    refuses is passed over first."""
    from tests.netsupport import Backend, CountingSite

    r = Rig().start(env={"KEDA_HTTP_DIRECT_POD_ROUTING": "true"})
    tried = []

    class StaleFirst(RandomSelector):
        def select(self, candidates, request):
            tried.append(candidates)
            return sorted(candidates, key=lambda c: ":" in c[0])[0]  # IPv4 first

    r.ic.gate.selector = StaleFirst()
    pod = Backend()
    pod_port = reactor.listenTCP(0, CountingSite(pod), interface="::1")
    try:
        p6 = pod_port.getHost().port
        r.load(slices=[])
        d = r.client.http.get(r.url(), headers={"Host": "web.example"})
        yield wait_for(lambda: r.ic.gate.waiting("default/web") == 1, what="request held")
        r.load(slices=[
            endpoint_slice(name="web-v6", ips=("::1",), ports=(("http", p6),)),
            endpoint_slice(name="web-stale", ports=(("http", r.dead_port),)),
        ])
        resp = yield d
        assert resp.code == 200
        assert resp.headers.getRawHeaders("x-keda-http-cold-start") == ["true"]
        yield resp.content()
        assert len(pod.seen) == 1
        assert r.backend.seen == []  # the Service address was never used
        assert tried[0] == (("127.0.0.1", r.dead_port), ("::1", p6))  # the stale pod first
        assert tried[1] == (("::1", p6),)  # then the one left
    finally:
        yield pod_port.stopListening()
        yield r.stop()


@pytest_twisted.inlineCallbacks
def test_direct_pod_cold_start_uses_connections_opened_while_the_pod_was_starting():
    """The slice lists the pod, not ready: while requests wait, the proxy
    connects to it (sending nothing); once it is ready, they go out on
    those connections, with no new dial."""
    r = Rig().start(env={"KEDA_HTTP_DIRECT_POD_ROUTING": "true",
                         "KEDA_HTTP_DIRECT_POD_WARM_CONNECTIONS": "3"})
    try:
        bp = r.backend_port.getHost().port
        r.load(slices=[endpoint_slice(ports=(("http", bp),), ready=False)])
        ds = [r.client.http.get(r.url(f"/{i}"), headers={"Host": "web.example"})
              for i in range(5)]
        yield wait_for(lambda: r.ic.gate.waiting("default/web") == 5, what="requests held")
        yield wait_for(lambda: r.backend.connections == 3, what="warm connections")
        key = (b"http", "127.0.0.1", bp, "web.default")
        yield wait_for(lambda: r.ic.pool.idle_count(key) == 3, what="idle in the pool")
        assert r.backend.seen == []  # nothing sent before the pod is ready
        r.load()
        resps = yield gatherResults(ds)
        assert [resp.code for resp in resps] == [200] * 5
        for resp in resps:
            yield resp.content()
        assert len(r.backend.seen) == 5
        # three requests on the warm connections, the other two had to dial
        assert r.backend.connections == 5
        assert r.ic.pool.idle_count(key) >= 3
    finally:
        yield r.stop()
