"""
The fake API server speaks the list/watch dialect the Kubernetes source
relies on.  If the fake drifted from the real server, the source's tests
would prove nothing, so its behaviour is pinned here with a plain HTTP
client (no kubernetes client, no reactor).
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import urllib3

from tests.fakeapi import (
    FakeApiServer,
    config_map,
    endpoint_slice,
    interceptor_route,
    service,
)

SERVICES = "/api/v1/services"
ROUTES = "/apis/http.keda.sh/v1beta1/interceptorroutes"


@pytest.fixture
def fake():
    server = FakeApiServer(bookmark_interval=0.1).start()
    yield server
    server.stop()


def request(fake, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def get(fake, path):
    return request(fake, "GET", path)


def watch(fake, path, count=None, timeout=5.0):
    """Read events until the stream ends (or C{count} events); returns
    (events, ended_cleanly, transfer-encoding).  urllib3, like the real
    client, notices a stream that stops without its final chunk."""
    pool = urllib3.PoolManager(retries=False)
    resp = pool.request("GET", fake.url + path, preload_content=False, timeout=timeout)
    events = []
    try:
        encoding = resp.headers.get("Transfer-Encoding")
        try:
            for chunk in resp.read_chunked():
                for line in chunk.splitlines():
                    events.append(json.loads(line))
                if count is not None and len(events) >= count:
                    return events, None, encoding
        except urllib3.exceptions.ProtocolError:
            return events, False, encoding
        return events, True, encoding
    finally:
        resp.release_conn()
        pool.clear()


def names(objs):
    return sorted(f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in objs)


def test_list_has_resource_version_and_typed_items_omit_kind(fake):
    fake.create(service("a", "ns1"))
    fake.create(interceptor_route("r", "ns1"))
    status, body = get(fake, SERVICES)
    assert status == 200
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(fake.resource_version)
    assert "kind" not in body["items"][0]
    assert body["items"][0]["metadata"]["resourceVersion"]
    _, crs = get(fake, ROUTES)
    assert crs["items"][0]["kind"] == "InterceptorRoute"  # unstructured keeps it


def test_namespaced_and_cluster_wide_paths(fake):
    fake.apply_many([service("a", "ns1"), service("b", "ns2"),
                     endpoint_slice("e", "ns2", service="b")])
    assert names(get(fake, SERVICES)[1]["items"]) == ["ns1/a", "ns2/b"]
    assert names(get(fake, "/api/v1/namespaces/ns2/services")[1]["items"]) == ["ns2/b"]
    slices = get(fake, "/apis/discovery.k8s.io/v1/namespaces/ns2/endpointslices")[1]
    assert names(slices["items"]) == ["ns2/e"]
    assert get(fake, "/api/v1/namespaces/ns1/services/a")[1]["metadata"]["name"] == "a"
    assert get(fake, "/api/v1/namespaces/ns1/services/zz")[0] == 404
    assert get(fake, "/api/v1/pods")[0] == 404


def test_label_and_field_selectors(fake):
    def labelled(name, ns, **labels):
        obj = config_map(name, ns, labelled=False)
        obj["metadata"]["labels"] = labels
        return obj

    fake.apply_many([
        labelled("a", "x", app="web", tier="front"),
        labelled("b", "x", app="web", tier="back"),
        labelled("c", "y", app="db"),
    ])
    path = "/api/v1/configmaps?labelSelector="

    def sel(selector):
        return names(get(fake, path + selector)[1]["items"])

    assert sel("app%3Dweb") == ["x/a", "x/b"]
    assert sel("app%3Dweb,tier%3Dback") == ["x/b"]
    assert sel("app%3D%3Dweb,tier!%3Dback") == ["x/a"]
    assert sel("tier") == ["x/a", "x/b"]
    assert sel("!tier") == ["y/c"]
    fields = "/api/v1/configmaps?fieldSelector="
    assert names(get(fake, fields + "metadata.name%3Db")[1]["items"]) == ["x/b"]
    assert names(get(fake, fields + "metadata.namespace%3Dy")[1]["items"]) == ["y/c"]
    assert names(get(fake, fields + "metadata.namespace!%3Dy")[1]["items"]) == ["x/a", "x/b"]
    status, body = get(fake, fields + "spec.foo%3D1")
    assert status == 400 and body["kind"] == "Status"


def test_watch_replays_later_events_chunked_and_filtered(fake):
    fake.create(service("a", "ns1"))
    rv = fake.resource_version
    fake.update(service("a", "ns1", ports=(("http", 81),)))
    fake.create(interceptor_route("r", "ns1"))  # another resource: not on this watch
    fake.create(service("b", "ns2"))  # another namespace
    fake.delete("Service", "ns1", "a")
    events, _, encoding = watch(
        fake, f"/api/v1/namespaces/ns1/services?watch=true&resourceVersion={rv}", count=2)
    assert encoding == "chunked"
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"]["kind"] == "Service"
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > rv


def test_watch_without_resource_version_starts_with_added_events(fake):
    fake.apply_many([service("a", "ns1"), service("b", "ns1")])
    events, _, _ = watch(fake, f"{SERVICES}?watch=1", count=2)
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    assert names(e["object"] for e in events) == ["ns1/a", "ns1/b"]


def test_timeout_seconds_ends_the_stream_cleanly(fake):
    rv = fake.resource_version
    started = time.monotonic()
    events, clean, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert clean is True and events == []
    assert 0.9 < time.monotonic() - started < 3


def test_bookmarks_carry_the_current_resource_version(fake):
    rv = fake.resource_version
    fake.create(interceptor_route("r", "ns1"))  # moves the RV; not a Service event
    events, _, _ = watch(
        fake, f"{SERVICES}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}", count=2)
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert events[0]["object"]["kind"] == "Service"
    assert events[0]["object"]["metadata"]["resourceVersion"] == str(fake.resource_version)


def test_too_old_resource_version_gets_410(fake):
    fake.create(service("a", "ns1"))
    old = fake.resource_version
    fake.create(service("b", "ns1"))
    fake.compact()
    events, clean, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={old}")
    assert clean is True
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    st = events[0]["object"]
    assert (st["kind"], st["code"], st["reason"]) == ("Status", 410, "Expired")
    # A fresh list's resourceVersion is good again.
    rv = get(fake, SERVICES)[1]["metadata"]["resourceVersion"]
    fake.create(service("c", "ns1"))
    events, _, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv}", count=1)
    assert events[0]["type"] == "ADDED"


def test_partial_compaction_keeps_newer_resource_versions(fake):
    fake.create(service("a", "ns1"))
    old = fake.resource_version
    fake.create(service("b", "ns1"))
    kept = fake.resource_version
    fake.create(service("c", "ns1"))
    fake.compact(upto=kept)
    assert watch(fake, f"{SERVICES}?watch=true&resourceVersion={old}")[0][0]["type"] == "ERROR"
    events, _, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={kept}", count=1)
    assert events[0]["object"]["metadata"]["name"] == "c"


def test_bounded_history_expires_old_resource_versions():
    with FakeApiServer(history_size=3) as fake:
        rv = fake.resource_version
        for i in range(5):
            fake.create(service(f"s{i}", "ns"))
        events, _, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv}")
        assert events[0]["object"]["code"] == 410


def test_objects_entering_and_leaving_a_selector(fake):
    rv = fake.resource_version
    fake.create(config_map("c", "ns1", labelled=False))
    fake.update(config_map("c", "ns1"))  # gains the label
    fake.update(config_map("c", "ns1", data={"k": "v"}))
    fake.update(config_map("c", "ns1", labelled=False))  # loses it
    events, _, _ = watch(
        fake, "/api/v1/configmaps?watch=true&labelSelector=http.keda.sh%2Fresponse-body%3Dtrue"
        f"&resourceVersion={rv}", count=3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_drop_watches_cuts_the_stream_without_a_final_chunk(fake):
    rv = fake.resource_version
    threading.Timer(0.2, fake.drop_watches).start()
    events, clean, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv}")
    assert events == [] and clean is False


def test_fail_latency_stop_and_start(fake):
    fake.fail(503, count=2)
    assert get(fake, SERVICES)[0] == 503
    assert get(fake, SERVICES)[0] == 503
    assert get(fake, SERVICES)[0] == 200
    fake.fail(500, only="/configmaps")
    assert get(fake, SERVICES)[0] == 200
    assert get(fake, "/api/v1/configmaps")[0] == 500
    fake.heal()
    fake.fail(reset=True, seconds=30)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(fake, SERVICES)
    fake.heal()
    fake.set_latency(0.3)
    started = time.monotonic()
    assert get(fake, SERVICES)[0] == 200
    assert time.monotonic() - started >= 0.3
    fake.set_latency(0)
    port = fake.port
    fake.stop()
    with pytest.raises(ConnectionRefusedError):
        get(fake, SERVICES)
    fake.create(service("while-down", "ns"))
    fake.start()
    assert fake.port == port
    assert names(get(fake, SERVICES)[1]["items"]) == ["ns/while-down"]


def test_writes_and_control_over_http(fake):
    status, created = request(fake, "POST", "/api/v1/namespaces/ns/services",
                              service("a", "ns"))
    assert status == 201 and created["metadata"]["uid"]
    assert request(fake, "POST", "/api/v1/namespaces/ns/services", service("a", "ns"))[0] == 409
    status, updated = request(fake, "PUT", "/api/v1/namespaces/ns/services/a",
                              service("a", "ns", ports=(("x", 1),)))
    assert status == 200 and updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert request(fake, "DELETE", "/api/v1/namespaces/ns/services/a")[0] == 200
    assert request(fake, "DELETE", "/api/v1/namespaces/ns/services/a")[0] == 404
    status, body = request(fake, "POST", "/fake/objects",
                           [service("b", "ns"), endpoint_slice("b-1", "ns", service="b")])
    assert status == 200 and body["applied"] == 2
    assert request(fake, "POST", "/fake/fail", {"status": 500, "count": 1})[0] == 200
    assert get(fake, SERVICES)[0] == 500
    assert get(fake, SERVICES)[0] == 200


def test_a_change_wakes_the_watches_of_its_type_at_once():
    """Each watch waits on its own resource type; a write of every kind,
    by every path, reaches that type's watches before the next write,
    without waiting for a timer (here a 60 s bookmark)."""
    server = FakeApiServer(bookmark_interval=60).start()
    got = {"slices": [], "services": []}

    def run(name, path):
        pool = urllib3.PoolManager(retries=False)
        resp = pool.request("GET", f"{server.url}{path}?watch=true&allowWatchBookmarks=true"
                            f"&resourceVersion={rv}", preload_content=False, timeout=10)
        try:
            for chunk in resp.read_chunked():
                got[name] += [json.loads(line)["type"] for line in chunk.splitlines()]
                if len(got[name]) == 2:
                    return
        finally:
            resp.release_conn()
            pool.clear()

    def arrived(name, count):
        deadline = time.monotonic() + 2
        while len(got[name]) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return len(got[name]) == count

    try:
        rv = server.resource_version
        threads = [threading.Thread(target=run, args=item, daemon=True) for item in {
            "slices": "/apis/discovery.k8s.io/v1/endpointslices", "services": SERVICES}.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while server.open_watches < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # both watches are waiting
        server.create(endpoint_slice("web-1"))
        assert arrived("slices", 1)
        server.apply_many([service("web")])
        assert arrived("services", 1)
        server.delete("EndpointSlice", "default", "web-1")
        assert arrived("slices", 2)
        server.delete("Service", "default", "web")
        assert arrived("services", 2)
        assert got == {"slices": ["ADDED", "DELETED"], "services": ["ADDED", "DELETED"]}
    finally:
        server.stop()


def test_the_time_a_watch_first_wrote_an_event_is_kept(fake):
    """The cold-start benchmark asks when the interceptor's watch got the
    update (``POST /fake/sent``), to tell the harness's share of the time."""
    before = time.monotonic()
    rv = int(fake.create(service("a", "ns1"))["metadata"]["resourceVersion"])
    assert request(fake, "POST", "/fake/sent", {"resourceVersion": rv}) == (200, {"sent": None})
    events, _, _ = watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv - 1}", count=1)
    assert events[0]["type"] == "ADDED"
    status_code, body = request(fake, "POST", "/fake/sent", {"resourceVersion": rv})
    assert status_code == 200 and before <= body["sent"] <= time.monotonic()
    first = body["sent"]
    watch(fake, f"{SERVICES}?watch=true&resourceVersion={rv - 1}", count=1)
    assert fake.sent[rv] == first  # the first write counts
