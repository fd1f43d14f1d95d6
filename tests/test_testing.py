"""
keda_proxy.testing: a plugin author's in-memory harness, through treq's
StubTreq and the real request path, to an in-memory backend.
"""

import json

import pytest
from twisted.plugin import IPlugin
from twisted.web.resource import Resource
from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep, IRequestStepPlugin, IRoutingPlugin
from keda_proxy.testing import ProxyHarness, simple_route
from tests.builders import route_yaml


class Backend(Resource):
    """Says what it got, as JSON."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = 0

    def render(self, request):
        self.requests += 1
        return json.dumps({
            "path": request.uri.decode(),
            "tenant": (request.getHeader(b"x-tenant") or b"").decode(),
            "body": request.content.read().decode(),
        }).encode()


@implementer(IRequestStep)
class _AddTenant:
    def __init__(self, next):
        self.next = next

    def handle(self, context):
        context.downstream.headers[b"X-Tenant"] = [context.facts.host.encode()]
        self.next.handle(context)


@implementer(IPlugin, IRequestStepPlugin)
class AddTenant:
    name = "add-tenant"

    def step(self, next):
        return _AddTenant(next)


def json_of(harness, deferred):
    response = harness.result_of(deferred)
    return response.code, harness.result_of(harness.treq.json_content(response))


def test_a_request_steps_effect_is_seen_by_the_backend():
    h = ProxyHarness(Backend(), request_steps=[AddTenant()])
    code, got = json_of(h, h.treq.get("http://example.com/a?b=1"))
    assert code == 200
    assert got == {"path": "/a?b=1", "tenant": "example.com", "body": ""}
    assert h.queue() == {"default/web": {"Concurrency": 0, "RequestCount": 1}}


def test_without_the_plugin_nothing_is_added():
    h = ProxyHarness(Backend())
    assert json_of(h, h.treq.get("http://example.com/"))[1]["tenant"] == ""


def test_a_body_reaches_the_backend_and_connections_are_reused():
    h = ProxyHarness(Backend())
    for text in ("one", "two"):
        code, got = json_of(h, h.treq.post("http://example.com/", data=text.encode()))
        assert (code, got["body"]) == (200, text)
    assert h.dials == ["10.0.0.1:80"]


def test_an_unrouted_host_is_404_and_never_reaches_the_backend():
    backend = Backend()
    h = ProxyHarness(backend)
    response = h.result_of(h.treq.get("http://nowhere.test/"))
    assert response.code == 404
    assert backend.requests == 0


def test_a_routing_plugin_is_consulted_first():
    @implementer(IPlugin, IRoutingPlugin)
    class Everything:
        name, priority = "everything", 0

        def route(self, request, snapshot):
            return snapshot.routes["default/web"]

    h = ProxyHarness(Backend(), routing_plugins=[Everything()])
    assert h.result_of(h.treq.get("http://nowhere.test/")).code == 200


def test_a_cold_route_holds_the_request_until_its_pods_are_ready():
    backend = Backend()
    h = ProxyHarness(backend, ready=False)
    d = h.treq.get("http://example.com/")
    with pytest.raises(AssertionError, match="no result yet"):
        h.result_of(d)
    assert h.queue()["default/web"]["Concurrency"] == 1
    h.set_routes([simple_route("example.com")], ready=True)
    response = h.result_of(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("X-KEDA-HTTP-Cold-Start") == ["true"]


def test_routes_may_come_from_manifest_files(tmp_path):
    (tmp_path / "routes.yaml").write_text(route_yaml(8080, host="demo.test"))
    h = ProxyHarness(Backend(), manifests=str(tmp_path / "routes.yaml"))
    assert h.result_of(h.treq.get("http://demo.test/")).code == 200
    assert h.dials == ["127.0.0.1:8080"]


def test_settings_come_by_their_variable_names():
    h = ProxyHarness(Backend(), ready=False, environ={"KEDA_HTTP_READINESS_TIMEOUT": "2s"})
    d = h.treq.get("http://example.com/")
    h.flush()
    h.clock.advance(2)
    assert h.result_of(d).code == 504


def test_the_example_in_the_plugin_docs_passes():
    """docs/plugins.md's "Testing a plugin" example, run as written."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    section = docs.split("# Testing a plugin", 1)[1].split("\n# ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()
