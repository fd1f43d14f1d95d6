"""Tests for keda_proxy.readiness: holding requests without polling."""

import gc

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from keda_proxy.model import KIND_ENDPOINT_SLICE
from keda_proxy.readiness import ReadinessGate
from keda_proxy.store import StateStore
from tests.builders import endpoint_slice, load


def make():
    clock = Clock()
    store = StateStore(clock=clock)
    load(store)
    return clock, store, ReadinessGate(store)


def test_warm_service_answers_at_once_without_scheduling():
    clock, store, gate = make()
    load(store, slices=[endpoint_slice()])
    d = gate.wait("default/web")
    assert d.called and d.result is False
    assert clock.getDelayedCalls() == []


def test_cold_service_fires_when_the_snapshot_flips_to_ready():
    clock, store, gate = make()
    d = gate.wait("default/web")
    results = []
    d.addCallback(results.append)
    assert gate.waiting("default/web") == 1
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice())
    assert results == []  # coalesced: not yet rebuilt
    clock.advance(store.coalesce)
    assert results == [True]
    assert gate.waiting() == 0


def test_not_ready_endpoints_do_not_wake_waiters():
    clock, store, gate = make()
    d = gate.wait("default/web")
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice(ready=False))
    clock.advance(1)
    assert not d.called
    assert gate.waiting("default/web") == 1


def test_other_services_do_not_wake_waiters():
    clock, store, gate = make()
    d = gate.wait("default/web")
    store.put(KIND_ENDPOINT_SLICE, "default/other-abc", endpoint_slice(service="other"))
    clock.advance(1)
    assert not d.called


def test_cancelled_wait_leaves_nothing_behind():
    clock, store, gate = make()
    d = gate.wait("default/web")
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures[0].check(CancelledError)
    assert gate.waiting() == 0
    assert gate._waiters == {}


def test_many_abandoned_waits_do_not_accumulate():
    clock, store, gate = make()
    gc.collect()
    for _ in range(100_000):
        d = gate.wait("default/web")
        d.addErrback(lambda f: None)
        d.cancel()
    assert gate.waiting() == 0
    assert gate._waiters == {}


def test_many_woken_requests_are_released_a_batch_per_turn_in_order():
    clock, store, gate = make()
    order = []
    waits = [gate.wait("default/web").addCallback(lambda _, i=i: order.append(i))
             for i in range(100)]
    waits[40].cancel()  # a client that leaves before its turn
    waits[40].addErrback(lambda f: None)
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice())
    store.flush()  # the swap: one batch now, the rest on later turns
    assert order == list(range(gate.batch))
    clock.advance(0)
    assert order == [i for i in range(100) if i != 40]
