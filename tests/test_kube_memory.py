"""
What the Kubernetes source does to stay small (docs/performance.md, Memory):
its list and watch requests go through the client's ApiClient without the
generated API classes (which import hundreds of model modules), and it
gives the C heap's free pages back after the lists.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from twisted.internet import reactor
from twisted.internet.task import deferLater

from keda_proxy.state import _kube_source as kube_source
from keda_proxy.state._kube_client import load_api_client
from keda_proxy.state._kube_source import KubernetesSource, release_free_heap
from keda_proxy.state._kube_watch import WATCHED_KINDS, WatchTiming, _listing
from keda_proxy.state._model import ALL_KINDS, KIND_CONFIG_MAP
from keda_proxy.state._store import StateStore
from tests.fakeapi import FakeApiServer, endpoint_slice, interceptor_route, service
from tests.kubeconfig import kubeconfig_dict, write_kubeconfig
from tests.netsupport import wait_for

ROOT = Path(__file__).resolve().parent.parent

FAST = WatchTiming(
    server_timeout=30, connect_timeout=2.0, list_timeout=10.0,
    backoff_base=0.05, backoff_cap=0.25, min_watch=0.2,
    resync_interval=0, health_interval=0.1, stop_timeout=2.0,
)

#: The generated methods behind each kind, as the source called them before.
GENERATED = {
    "InterceptorRoute": ("CustomObjectsApi", ("http.keda.sh", "v1beta1", "interceptorroutes")),
    "HTTPScaledObject": ("CustomObjectsApi", ("http.keda.sh", "v1alpha1", "httpscaledobjects")),
    "Service": ("CoreV1Api", "service"),
    "EndpointSlice": ("DiscoveryV1Api", "endpoint_slice"),
    "ConfigMap": ("CoreV1Api", "config_map"),
}


def generated_call(kind: str, api, namespace: str, **kw):
    cls, what = GENERATED[kind]
    typed = getattr(k8s_client, cls)(api)
    if cls == "CustomObjectsApi":
        group, version, plural = what
        if namespace:
            return typed.list_namespaced_custom_object(group, version, namespace, plural, **kw)
        return typed.list_cluster_custom_object(group, version, plural, **kw)
    if namespace:
        return getattr(typed, f"list_namespaced_{what}")(namespace, **kw)
    return getattr(typed, f"list_{what}_for_all_namespaces")(**kw)


class Recorder:
    """Stands in for the REST client: records each request, answers with
    C{status} and C{body}."""

    def __init__(self, status=200, body=b'{"kind": "List", "items": []}'):
        self.status, self.body = status, body
        self.calls = []

    def request(self, method, url, headers=None, body=None, post_params=None,
                _request_timeout=None):
        split = urlsplit(url)
        self.calls.append({"method": method, "path": split.path,
                           "query": sorted(parse_qsl(split.query)), "headers": dict(headers),
                           "body": body, "timeout": _request_timeout})
        raw = urllib3.HTTPResponse(body=io.BytesIO(self.body), status=self.status, reason="X",
                                   headers={"Content-Type": "application/json"},
                                   preload_content=False)
        return k8s_client.rest.RESTResponse(raw)


@pytest.fixture
def api(tmp_path):
    """An ApiClient with a bearer token, whose requests are recorded."""
    config = kubeconfig_dict("https://kube.example:6443")
    config["users"][0]["user"] = {"token": "s3cret"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = load_api_client(str(path))
    client.user_agent = "keda-interceptor/test"
    client.rest_client = Recorder()
    return client


CALLS = [
    {},
    {"label_selector": "http.keda.sh/response-body=true"},
    {"watch": True, "allow_watch_bookmarks": True, "timeout_seconds": 317,
     "resource_version": "12345", "_request_timeout": (5.0, 410.4)},
]


@pytest.mark.parametrize("namespace", ["", "team-a"])
@pytest.mark.parametrize("kw", CALLS)
@pytest.mark.parametrize("kind", [k.kind for k in WATCHED_KINDS])
def test_requests_are_the_generated_methods_requests(api, kind, namespace, kw):
    """Same method, path, query, headers (credentials included) and timeout;
    the same raw urllib3 response back, unread."""
    watched = {k.kind: k for k in WATCHED_KINDS}[kind]
    ours = watched.list_call(api, namespace, _preload_content=False, **kw)
    theirs = generated_call(kind, api, namespace, _preload_content=False, **kw)
    mine, reference = api.rest_client.calls
    assert mine == reference
    assert mine["headers"]["authorization"] == "Bearer s3cret"
    assert mine["headers"]["Accept"] == "application/json"
    assert isinstance(ours, urllib3.HTTPResponse) and isinstance(theirs, urllib3.HTTPResponse)
    assert ours.read() == theirs.read() == b'{"kind": "List", "items": []}'


@pytest.mark.parametrize("status", [401, 403, 404, 410, 500])
def test_errors_are_the_generated_methods_errors(api, status):
    body = json.dumps({"kind": "Status", "code": status, "message": "no"}).encode()
    api.rest_client = Recorder(status=status, body=body)
    errors = []
    for call in (lambda: WATCHED_KINDS[2].list_call(api, "", _preload_content=False),
                 lambda: generated_call("Service", api, "", _preload_content=False)):
        with pytest.raises(ApiException) as e:
            call()
        errors.append(e.value)
    ours, theirs = errors
    assert type(ours) is type(theirs)
    assert (ours.status, ours.reason, ours.body) == (theirs.status, theirs.reason, theirs.body)
    assert ours.status == status


def test_clients_without_param_serialize_use_the_generated_methods():
    """Clients before v37 (no C{param_serialize}) import every model anyway
    with C{kubernetes.client}; they keep the generated methods."""
    calls = []

    def generated(api, namespace, **kw):
        calls.append((api, namespace, kw))
        return "generated"

    call = _listing("/api/v1", "services", generated)
    old = object()
    assert call(old, "ns", watch=True) == "generated"
    assert calls == [(old, "ns", {"watch": True})]


_PROBE = textwrap.dedent("""
    import json, sys, time
    from twisted.internet import reactor
    from keda_proxy.state._kube_client import load_api_client
    from keda_proxy.state._kube_source import KubernetesSource
    from keda_proxy.state._model import ALL_KINDS
    from keda_proxy.state._store import StateStore

    store = StateStore(clock=reactor, expected_kinds=frozenset(ALL_KINDS))
    source = KubernetesSource(store, reactor, reactor, load_api_client(sys.argv[1]))
    out = {}

    def check(deadline=time.monotonic() + 30):
        snap = store.current
        if (snap.synced and len(snap.routes) == 3) or time.monotonic() > deadline:
            out["synced"], out["routes"] = snap.synced, len(snap.routes)
            out["modules"] = sorted(m for m in sys.modules if m.startswith("kubernetes.client."))
            source.stopService().addBoth(lambda _: reactor.stop())
        else:
            reactor.callLater(0.05, check)

    source.startService()
    reactor.callLater(0, check)
    reactor.run()
    print(json.dumps(out))
""")


def test_no_generated_api_class_or_model_is_imported(tmp_path):
    """A fresh process that builds the source, syncs three routes and
    everything else from the fake API server, has imported none of the
    generated API modules or model modules (CoreV1Api alone: 237 modules,
    about 20 MiB)."""
    with FakeApiServer(bookmark_interval=0.2) as fake:
        for i in range(3):
            fake.apply_many([interceptor_route(f"r{i}", "ns", service=f"s{i}",
                                               hosts=[f"h{i}.example"]),
                             service(f"s{i}", "ns"), endpoint_slice(f"s{i}-1", "ns",
                                                                    service=f"s{i}")])
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
        p = subprocess.run([sys.executable, "-c", _PROBE, kubeconfig], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["synced"] and out["routes"] == 3
    loaded = out["modules"]
    assert [m for m in loaded if m.startswith("kubernetes.client.api.")] == []
    assert [m for m in loaded if m.startswith("kubernetes.client.models.")] == []
    assert "kubernetes.client.api_client" in loaded  # the client itself is used


def test_release_free_heap():
    if not sys.platform.startswith("linux") or kube_source._malloc_trim is None:
        pytest.skip("not glibc")
    assert release_free_heap() is True


@pytest_twisted.ensureDeferred
async def test_the_heap_is_trimmed_once_after_the_lists_settle(tmp_path, monkeypatch):
    trims = []
    monkeypatch.setattr(kube_source, "TRIM_DELAY", 0.3)
    monkeypatch.setattr(kube_source, "release_free_heap", lambda: trims.append(1))
    with FakeApiServer(bookmark_interval=0.2) as fake:
        fake.apply_many([interceptor_route("r", "ns", service="s"), service("s", "ns")])
        store = StateStore(clock=reactor, expected_kinds=frozenset(ALL_KINDS))
        source = KubernetesSource(store, reactor, reactor,
                                  load_api_client(write_kubeconfig(tmp_path / "kc", fake.url)),
                                  timing=FAST)
        source.startService()
        try:
            await wait_for(lambda: store.current.synced, what="first sync")
            # five lists, one trim, once they have settled
            await wait_for(lambda: trims, what="a trim")
            await deferLater(reactor, 0.6, lambda: None)
            assert len(trims) == 1
            # a re-list of one kind, even one that changes nothing: one more
            source.watchers[KIND_CONFIG_MAP].request_relist()
            await wait_for(lambda: len(trims) == 2, what="a trim after the re-list")
            # stopping cancels a pending one
            source.watchers[KIND_CONFIG_MAP].request_relist()
            await wait_for(lambda: source._trim.active(), what="a trim pending")
        finally:
            await source.stopService()
        assert not source._trim.active()
        assert len(trims) == 2
