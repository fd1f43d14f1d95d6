"""
``/metrics`` as Go's ``promhttp.Handler()`` serves the OTel exporter's
output: the instruments, ``target_info``, the ``process_*`` series and the
scrape counters; only ``/metrics`` answers.  Scraped over a real loopback
socket, read with prometheus_client's own parser.
"""

from __future__ import annotations

import os
import resource
import time

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor

from keda_proxy.ops._adminsite import AdminSite
from keda_proxy.ops._metrics import (
    SERVICE_NAME,
    ExpositionExtras,
    ProxyMetrics,
    label_name,
    metrics_root,
    resource_attributes,
    service_version,
)
from keda_proxy.steps._counting import QueueCounter
from tests.netsupport import Client


@pytest.fixture
def site():
    """A metrics port on 127.0.0.1 with a resource from the environment
    given; yields (URL of /metrics' port, a function to scrape, the
    instruments' registry)."""
    ports, clients = [], []

    def start(environ=None):
        metrics = ProxyMetrics(reactor, QueueCounter())
        extras = ExpositionExtras(environ=environ or {})
        port = reactor.listenTCP(0, AdminSite(metrics_root(metrics, extras), reactor=reactor),
                                 interface="127.0.0.1")
        ports.append(port)
        client = Client()
        clients.append(client)
        base = f"http://127.0.0.1:{port.getHost().port}"
        return base, client, metrics

    yield start
    for c in clients:
        pytest_twisted.blockon(c.close())
    for p in ports:
        pytest_twisted.blockon(p.stopListening())


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest_twisted.inlineCallbacks
def scrape(client, base, path="/metrics"):
    resp = yield client.http.get(base + path)
    body = yield resp.content()
    return resp, body.decode()


@pytest_twisted.inlineCallbacks
def test_target_info_is_the_resource_as_gos_exporter_writes_it(site):
    base, client, _ = site({"OTEL_RESOURCE_ATTRIBUTES":
                            " k8s.pod.name = web-1 ,deployment.environment=prod%20eu,"
                            "service.name=mine,broken,1st=a,_x=b,a.b=2,a-b=1"})
    resp, text = yield scrape(client, base)
    assert resp.code == 200
    fam = families(text)["target_info"]
    assert fam.type == "gauge"
    assert fam.documentation == "Target metadata"
    [sample] = fam.samples
    assert sample.value == 1
    assert sample.labels == {
        "service_name": SERVICE_NAME,  # Go's own wins over the variable's
        "service_version": service_version(),
        "k8s_pod_name": "web-1",
        "deployment_environment": "prod eu",
        "key_1st": "a",
        "key_x": "b",
        "a_b": "1;2",  # two keys, one label: the values sorted and joined
    }


@pytest_twisted.inlineCallbacks
def test_process_series_as_gos_process_collector_names_them(site):
    base, client, _ = site()
    resp, text = yield scrape(client, base)
    fams = families(text)
    expected = {
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_virtual_memory_bytes": "gauge",
        "process_virtual_memory_max_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_max_fds": "gauge",
        "process_start_time_seconds": "gauge",
        "process_network_receive_bytes": "counter",
        "process_network_transmit_bytes": "counter",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name
        [sample] = fams[name].samples
        assert sample.labels == {}
        assert sample.value >= 0
    value = {name: fams[name].samples[0].value for name in expected}
    assert value["process_resident_memory_bytes"] > 10 * 2**20
    assert value["process_virtual_memory_bytes"] >= value["process_resident_memory_bytes"]
    assert abs(value["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 2
    assert value["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert time.time() - 24 * 3600 < value["process_start_time_seconds"] <= time.time()
    assert 0 < value["process_cpu_seconds"] <= time.process_time() + 1
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    assert value["process_virtual_memory_max_bytes"] == (
        float(2**64 - 1) if limit == resource.RLIM_INFINITY else limit)
    # in the text as Go writes them
    assert "\nprocess_cpu_seconds_total " in text
    assert "\nprocess_network_receive_bytes_total " in text


@pytest_twisted.inlineCallbacks
def test_scrapes_are_counted_as_promhttp_counts_them(site):
    base, client, _ = site()
    _, text = yield scrape(client, base)
    fams = families(text)
    counts = {s.labels["code"]: s.value for s in fams["promhttp_metric_handler_requests"].samples}
    assert counts == {"200": 0, "500": 0, "503": 0}  # this scrape counts once answered
    assert fams["promhttp_metric_handler_requests_in_flight"].samples[0].value == 1
    yield scrape(client, base)
    _, text = yield scrape(client, base)
    counts = {s.labels["code"]: s.value
              for s in families(text)["promhttp_metric_handler_requests"].samples}
    assert counts["200"] == 2


@pytest_twisted.inlineCallbacks
def test_the_instruments_and_pythons_runtime_series_are_there_too(site):
    base, client, _ = site()
    _, text = yield scrape(client, base)
    fams = families(text)
    assert "interceptor_request_concurrency" in fams
    assert fams["python_info"].samples[0].labels["implementation"]
    assert fams["python_gc_collections"].type == "counter"
    # the exporter has no _created series, nor does this
    assert "_created" not in text


@pytest_twisted.inlineCallbacks
def test_only_metrics_answers(site):
    base, client, _ = site()
    for path in ("/", "/metric", "/metrics/", "/metrics/x", "/debug/pprof/", "/queue"):
        resp, body = yield scrape(client, base, path)
        assert resp.code == 404, path
        assert body == "404 page not found\n"
        assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
        assert resp.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    resp, body = yield scrape(client, base, "/metrics?name[]=x")
    assert resp.code == 200 and "target_info" in body
    resp = yield client.http.head(base + "/metrics")
    assert resp.code == 200
    assert (yield resp.content()) == b""
    resp = yield client.http.head(base + "/")
    assert resp.code == 404


def test_an_otlp_push_of_the_instruments_registry_carries_no_exposition_series():
    """The OTLP pusher collects ProxyMetrics.registry: the resource travels
    as the push's resource, not as a target_info metric, and there are no
    process_* series, as with Go's OTLP reader."""
    metrics = ProxyMetrics(reactor, QueueCounter())
    names = {f.name for f in metrics.registry.collect()}
    assert names and all(n.startswith("interceptor_") for n in names)


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("a=1", {"a": "1"}),
    (" a = 1 , b=2 ", {"a": "1", "b": "2"}),
    ("a=1,a=2", {"a": "2"}),  # the last wins
    ("a", {}),  # no "=": skipped
    ("=1,b=2", {"b": "2"}),  # no key: dropped
    ("a=x%2Cy%3Dz", {"a": "x,y=z"}),  # %-decoded
    ("a=100%", {"a": "100%"}),  # a stray %: kept as written
    ("a=b=c", {"a": "b=c"}),
    ("a=", {"a": ""}),
])
def test_otel_resource_attributes_as_the_sdk_reads_them(text, expected):
    attributes = resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": text})
    assert attributes.pop("service.name") == SERVICE_NAME
    assert attributes.pop("service.version") == service_version()
    assert attributes == expected


def test_otel_service_name_does_not_rename_the_interceptor():
    attributes = resource_attributes({"OTEL_SERVICE_NAME": "other",
                                      "OTEL_RESOURCE_ATTRIBUTES": "service.version=9"})
    assert attributes == {"service.name": SERVICE_NAME, "service.version": service_version()}


@pytest.mark.parametrize(("key", "label"), [
    ("service.name", "service_name"),
    ("k8s.pod.name", "k8s_pod_name"),
    ("http-route/x", "http_route_x"),
    ("1abc", "key_1abc"),
    ("_abc", "key_abc"),
    ("__abc", "__abc"),
    ("ünï", "key_n_"),
])
def test_attribute_keys_become_label_names_as_otlptranslator_makes_them(key, label):
    assert label_name(key) == label
