"""
Endpoint selectors by name: the three that ship are plugins of the same
interface a third party implements, KEDA_HTTP_ENDPOINT_SELECTOR picks one,
and the pipeline tells a selector which pod each request is on.
"""

import os
import random
import subprocess
from collections import Counter

import pytest
from twisted.internet.error import ConnectionRefusedError
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IEndpointSelector
from keda_proxy.state._model import KIND_ENDPOINT_SLICE
from keda_proxy.steps._selection import (
    LeastPendingSelector,
    RandomSelector,
    RoundRobinSelector,
    UnknownSelector,
    discover_selectors,
    selector_named,
)
from tests.builders import endpoint_slice
from tests.proxyfakes import OK_5, Harness
from tests.test_proxy import warm
from tests.test_twistd import TWISTD

PODS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


@pytest.mark.parametrize("name, cls", [("random", RandomSelector),
                                       ("round-robin", RoundRobinSelector),
                                       ("least-pending", LeastPendingSelector)])
def test_the_shipped_selectors_are_plugins_found_by_name(name, cls):
    assert name in discover_selectors()
    selector = selector_named(name)
    assert type(selector) is cls and verifyObject(IEndpointSelector, selector)


def test_an_unknown_name_is_refused_naming_it_and_the_installed_ones():
    with pytest.raises(UnknownSelector) as e:
        selector_named("fastest")
    assert "'fastest'" in str(e.value) and "round-robin" in str(e.value)


def _harness(selector):
    h = Harness()
    warm(h, slices=[endpoint_slice(ips=PODS)])
    h.gate.selector = selector
    return h


class _Pods:
    """Sends GETs through the harness and tells which upstream connection,
    so which pod, each one went to."""

    def __init__(self, h):
        self.h = h
        self.ups = []

    def send(self):
        h = self.h
        before = [up.sent().count(b"GET ") for up in self.ups]
        dials = len(h.dials)
        h.get()
        if len(h.dials) > dials:
            self.ups.append(h.upstream())
            return self.ups[-1]
        return next(up for up, n in zip(self.ups, before, strict=False)
                    if up.sent().count(b"GET ") > n)


def test_round_robin_spreads_requests_exactly_evenly():
    pods = _Pods(_harness(RoundRobinSelector()))
    spread = Counter()
    for _ in range(30):
        up = pods.send()
        spread[up.key[1]] += 1
        up.respond(OK_5)
    assert spread == {pod: 10 for pod in PODS}


def test_least_pending_keeps_requests_off_a_slow_pod():
    h = _harness(LeastPendingSelector(random.Random(3)))
    pods, slow = _Pods(h), PODS[0]
    spread = Counter()
    for _ in range(40):  # 40 concurrent requests: the slow pod answers none
        up = pods.send()
        spread[up.key[1]] += 1
        if up.key[1] != slow:
            up.respond(OK_5)
    assert 1 <= spread[slow] <= 8, spread
    assert h.gate.selector.pending == {(slow, 8080): spread[slow]}


def test_the_selector_hears_when_each_request_ends_however_it_ends():
    selector = LeastPendingSelector()
    h = _harness(selector)
    proto, _ = h.get()
    (pod,) = selector.pending
    proto.connectionLost(None)  # the client leaves
    assert selector.pending == {}
    h.get()
    h.dials[-1].fail(ConnectionRefusedError())  # a stale pod: another is tried
    (retried,) = selector.pending
    assert retried != (h.dials[-2].key[1], 8080)
    h.upstream().respond(OK_5)
    assert selector.pending == {}


def test_an_unknown_selector_stops_startup_with_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
    env.update(KEDA_HTTP_PROXY_PORT="0", KEDA_HTTP_ADMIN_PORT="0",
               KEDA_HTTP_ENDPOINT_SELECTOR="fastest")
    proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fastest" in lines[0], proc.stderr


class _Told(RandomSelector):
    """A random selector that keeps what it is told."""

    def __init__(self, counts):
        super().__init__(random.Random(1))
        self.counts_requests = counts
        self.told = []

    def started(self, pod):
        self.told.append(("started", pod))

    def finished(self, pod):
        self.told.append(("finished", pod))


@pytest.mark.parametrize("counts", [True, False])
def test_a_selector_is_told_of_requests_unless_it_counts_none(counts):
    selector = _Told(counts)
    h = _harness(selector)
    h.get()
    h.upstream().respond(OK_5)
    (pod,) = [p for what, p in selector.told if what == "started"] or [None]
    expected = [("started", pod), ("finished", pod)] if counts else []
    assert selector.told == expected and (pod is not None) == counts


def test_the_shipped_selectors_that_weigh_nothing_say_so():
    assert RandomSelector.counts_requests is False
    assert RoundRobinSelector.counts_requests is False
    assert getattr(LeastPendingSelector(), "counts_requests", True) is True


class _Prefers(RandomSelector):
    """Always the given pod when it is ready, else the first candidate."""

    def __init__(self, pod):
        super().__init__()
        self.pod = pod

    def select(self, candidates, request):
        return self.pod if self.pod in candidates else candidates[0]


def test_a_stale_pod_is_retried_on_the_pods_ready_now_not_on_earlier_ones():
    """A pod's target is reused while the ready pods stay the same: a
    change of them reaches the retries."""
    stale, before, now = PODS[0], PODS[1], "10.0.0.9"
    h = _harness(_Prefers((stale, 8080)))
    warm(h, slices=[endpoint_slice(ips=(stale, before))])
    h.get()
    up = h.upstream()
    up.respond(OK_5)
    up.close()  # no pooled connection left to the pod
    # only the endpoints change, as when a pod is replaced
    ready = endpoint_slice(ips=(stale, now))
    h.store.put(KIND_ENDPOINT_SLICE, ready.key, ready)
    h.store.flush()
    h.get()
    assert h.dials[-1].key[1] == stale
    h.dials[-1].fail(ConnectionRefusedError())
    assert h.dials[-1].key[1] == now
