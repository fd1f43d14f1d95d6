"""
The request path embedded in a stock twisted.web Site (keda_proxy.embedding),
over real loopback sockets, against a real backend fed from manifest files.
"""

import hashlib
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web import resource, server

from keda_proxy.embedding import ConfigError, ManifestError, build_resource
from tests.builders import route_yaml
from tests.netsupport import Client, wait_for


class Backend(resource.Resource):
    """Says what it got; C{/stream} sends one line, then waits for the test."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.streams = []

    def render_GET(self, request):
        if request.path == b"/stream":
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"first\n")
            self.streams.append(request)
            return server.NOT_DONE_YET
        return b"hello from " + request.path

    def render_POST(self, request):
        body = request.content.read()
        return json.dumps({"size": len(body),
                           "sha256": hashlib.sha256(body).hexdigest()}).encode()


class QuietSite(server.Site):
    def log(self, request):
        pass


@pytest.fixture
def embedded(tmp_path):
    backend = Backend()
    backend_port = reactor.listenTCP(0, QuietSite(backend), interface="127.0.0.1")
    (tmp_path / "routes.yaml").write_text(route_yaml(backend_port.getHost().port))
    proxy, service = build_resource(manifests=str(tmp_path / "routes.yaml"))
    service.startService()
    site = server.Site(proxy)  # stock twisted.web, nothing of ours
    proxy_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = Client()

    class Rig:
        def url(self, path="/"):
            return f"http://127.0.0.1:{proxy_port.getHost().port}{path}"

    rig = Rig()
    rig.backend, rig.client, rig.service = backend, client, service
    yield rig
    pytest_twisted.blockon(client.close())
    pytest_twisted.blockon(proxy_port.stopListening())
    if service.running:
        pytest_twisted.blockon(service.stopService())
    pytest_twisted.blockon(backend_port.stopListening())


HOST = {"Host": "demo.test"}


@pytest_twisted.inlineCallbacks
def test_a_get_is_forwarded(embedded):
    response = yield embedded.client.http.get(embedded.url("/hello"), headers=HOST)
    assert response.code == 200
    assert (yield response.content()) == b"hello from /hello"


@pytest_twisted.inlineCallbacks
def test_a_post_body_reaches_the_backend_whole(embedded):
    body = bytes(range(256)) * 1200  # 300 KiB: twisted.web buffers it in a file
    response = yield embedded.client.http.post(embedded.url("/upload"), data=body,
                                               headers=HOST)
    assert response.code == 200
    got = json.loads((yield response.content()))
    assert got == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest_twisted.inlineCallbacks
def test_a_response_streams_while_the_backend_writes(embedded):
    response = yield embedded.client.http.get(embedded.url("/stream"), headers=HOST,
                                              unbuffered=True)
    chunks = []
    done = treq.collect(response, chunks.append)
    yield wait_for(lambda: b"".join(chunks) == b"first\n", what="the first chunk")
    assert not done.called
    stream = embedded.backend.streams[0]
    stream.write(b"second\n")
    stream.finish()
    yield done
    assert b"".join(chunks) == b"first\nsecond\n"


@pytest_twisted.inlineCallbacks
def test_an_unrouted_host_is_404(embedded):
    response = yield embedded.client.http.get(embedded.url("/"),
                                              headers={"Host": "nowhere.test"})
    assert response.code == 404
    assert (yield response.content()) == b"Not Found\n"


@pytest_twisted.inlineCallbacks
def test_the_service_stops_the_manifest_source(embedded):
    yield embedded.service.stopService()
    assert not any(child.running for child in embedded.service)


def test_bad_settings_and_paths_fail_with_one_line(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        build_resource(manifests=str(tmp_path / "missing.yaml"))
    (tmp_path / "m.yaml").write_text("")
    with pytest.raises(ConfigError, match="KEDA_HTTP_REQUEST_TIMEOUT"):
        build_resource(manifests=str(tmp_path / "m.yaml"),
                       environ={"KEDA_HTTP_REQUEST_TIMEOUT": "soon"})
