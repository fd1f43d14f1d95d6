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
