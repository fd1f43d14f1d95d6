"""
Request-step plugins: found by name (KEDA_HTTP_REQUEST_STEPS), run in order
after routing and before a request is counted, held or forwarded; and the
example plugin, discovered from its own folder and run by twistd.
"""

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.plugin import IPlugin
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IRequestStep, IRequestStepPlugin
from keda_proxy.steps import write_error
from keda_proxy.steps._pluginsteps import UnknownRequestStep, request_steps_named
from keda_proxy.testing import ProxyHarness, simple_route
from tests.builders import route_yaml
from tests.netsupport import discovered_with
from tests.test_twistd import TWISTD, backend, run  # noqa: F401 -- fixtures

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "request-step-plugin"


class Echo(Resource):
    """Answers with the request headers it got, as JSON."""

    isLeaf = True

    def render(self, request):
        return json.dumps({k.decode().lower(): [v.decode() for v in vs]
                           for k, vs in request.requestHeaders.getAllRawHeaders()}).encode()


@implementer(IRequestStep)
class _Step:
    def __init__(self, plugin, next):
        self.plugin, self.next = plugin, next

    def handle(self, context):
        self.plugin.seen += 1
        if self.plugin.refuse:
            write_error(context.downstream, 403)
            return
        context.downstream.headers.setdefault(b"X-Steps", []).append(self.plugin.name.encode())
        self.next.handle(context)


@implementer(IPlugin, IRequestStepPlugin)
class Tag:
    """Appends its name to X-Steps, or refuses every request with 403."""

    def __init__(self, name, refuse=False):
        self.name, self.refuse, self.seen = name, refuse, 0

    def step(self, next):
        return _Step(self, next)


def get(harness, host="example.com"):
    response = harness.result_of(harness.treq.get(f"http://{host}/"))
    return response.code, harness.result_of(harness.treq.content(response))


# -- choosing plugins by name ----------------------------------------------------

def test_plugins_are_chosen_by_name_in_the_configured_order():
    a, b = Tag("a"), Tag("b")
    assert request_steps_named(["b", "a"], {"a": a, "b": b}) == (b, a)
    assert request_steps_named([], {"a": a}) == ()


def test_an_unknown_name_is_one_line_naming_it_and_the_installed_ones():
    with pytest.raises(UnknownRequestStep) as info:
        request_steps_named(["a", "auth"], {"a": Tag("a"), "b": Tag("b")})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "'auth'" in message and "installed: a, b" in message


# -- where the steps run ------------------------------------------------------------

def test_steps_run_in_order_and_may_change_the_forwarded_headers():
    h = ProxyHarness(Echo(), request_steps=[Tag("first"), Tag("second")])
    code, body = get(h)
    assert code == 200
    assert json.loads(body)["x-steps"] == ["first", "second"]


def test_a_refused_request_is_neither_counted_nor_forwarded():
    refuse = Tag("no", refuse=True)
    h = ProxyHarness(Echo(), request_steps=[refuse])
    assert get(h) == (403, b"Forbidden\n")
    assert refuse.seen == 1
    assert h.dials == []
    assert h.queue() == {"default/web": {"Concurrency": 0, "RequestCount": 0}}


def test_a_refused_request_does_not_wake_a_workload_scaled_to_zero():
    h = ProxyHarness(Echo(), request_steps=[Tag("no", refuse=True)], ready=False)
    assert get(h)[0] == 403  # answered at once, not held for a pod
    assert h.queue()["default/web"] == {"Concurrency": 0, "RequestCount": 0}


class Broken:
    """A plugin whose step raises."""

    name = "broken"

    def step(self, next):
        return self

    def handle(self, context):
        raise RuntimeError("bug in a plugin")


def test_a_step_that_raises_is_answered_500_and_logged_and_the_proxy_goes_on():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = ProxyHarness(Echo(), request_steps=[Broken()])
        assert get(h)[0] == 500
        assert get(h)[0] == 500  # the next request is served the same way
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 2 and failures[0]["name"] == "broken"
    assert h.queue()["default/web"]["Concurrency"] == 0
    for e in failures:  # observed: not an unhandled error for pytest
        e["log_failure"].cleanFailure()


def test_steps_see_only_routed_requests_that_no_static_route_answers():
    from keda_proxy.state import StaticResponse, StaticRoute

    tag = Tag("t")
    static = StaticRoute(rules=simple_route("static.test").rules,
                         response=StaticResponse(status_code=200, body="static"),
                         mode="Always")
    h = ProxyHarness(Echo(), request_steps=[tag],
                     routes=[simple_route("example.com"),
                             simple_route("static.test", name="s", static_routes=(static,))])
    assert get(h, "nowhere.test")[0] == 404
    assert get(h, "static.test") == (200, b"static")
    assert tag.seen == 0
    assert get(h)[0] == 200 and tag.seen == 1


# -- the example plugin -------------------------------------------------------------

DISCOVER = """
import json
from keda_proxy.steps._pluginsteps import discover_request_steps
print(json.dumps(sorted([n, type(p).__module__] for n, p in discover_request_steps().items())))
"""


def discover_with(pythonpath):
    return discovered_with(DISCOVER, pythonpath)


def test_example_plugin_is_discovered_from_a_separate_folder():
    assert discover_with([ROOT]) == []
    assert discover_with([ROOT, EXAMPLE]) == [["api-key", "keda_proxy.plugins.api_key"]]


def load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "api_key_example", EXAMPLE / "keda_proxy" / "plugins" / "api_key.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_plugin_provides_the_interfaces():
    plugin = load_example().apiKey
    assert verifyObject(IRequestStepPlugin, plugin) and verifyObject(IPlugin, plugin)


def send(url, host, key=None):
    """(status, body) of a GET, with an X-Api-Key when C{key} is given."""
    headers = {"Host": host, **({"X-Api-Key": key} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_twistd_runs_the_example_plugin_named_in_the_environment(
        tmp_path, backend, run):  # noqa: F811 -- fixtures
    (tmp_path / "m.yaml").write_text(route_yaml(backend))
    ic = run(tmp_path / "m.yaml", PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLE)]),
             KEDA_HTTP_REQUEST_STEPS="api-key", API_KEYS="s3cret, other").ready()
    queue = f"http://127.0.0.1:{ic.admin}/queue"
    assert send(ic.url(), "demo.test") == (401, b"a valid X-Api-Key header is required\n")
    assert send(ic.url(), "demo.test", key="wrong")[0] == 401
    assert json.loads(send(queue, "admin")[1])["default/demo"]["RequestCount"] == 0
    status, body = send(ic.url(), "demo.test", key="s3cret")
    assert status == 200
    assert not any(name.lower() == "x-api-key" for name in json.loads(body)["headers"])
    assert json.loads(send(queue, "admin")[1])["default/demo"]["RequestCount"] == 1
    assert "request step plugin api-key enabled" in ic.output()


def test_an_unknown_request_step_stops_startup_with_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
    env.update(KEDA_HTTP_PROXY_PORT="0", KEDA_HTTP_ADMIN_PORT="0",
               KEDA_HTTP_REQUEST_STEPS="api-key,rate-limit",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLE)]))
    proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "'rate-limit'" in lines[0] and "api-key" in lines[0]


@pytest.mark.parametrize("gone", [False, True])
def test_a_steps_cleanups_run_once_and_departures_only_when_the_client_left(gone):
    from twisted.internet.task import Clock

    from keda_proxy.steps import RequestContext

    class Downstream:
        finished = False

    context = RequestContext(Downstream(), Clock(), 0.0)
    calls = []
    context.on_end(lambda g: calls.append(("end 1", g)))
    context.on_gone(lambda: calls.append("gone 1"))
    context.on_end(lambda g: calls.append(("end 2", g)))
    context.on_gone(lambda: calls.append("gone 2"))
    context.end(gone)
    context.end(gone)
    departures = ["gone 2", "gone 1"] if gone else []
    assert calls == departures + [("end 2", gone), ("end 1", gone)]
    assert context.over and context.gone == gone
