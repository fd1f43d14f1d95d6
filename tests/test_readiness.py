"""Tests for keda_proxy.steps._readiness: holding requests without polling."""

import gc

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface import implementer

from keda_proxy.interfaces import IEndpointSelector
from keda_proxy.state._endpoints import split_host_port
from keda_proxy.state._model import KIND_ENDPOINT_SLICE
from keda_proxy.state._store import StateStore
from keda_proxy.steps._readiness import ReadinessGate
from tests.builders import endpoint_slice, load


def make():
    clock = Clock()
    store = StateStore(clock=clock)
    load(store)
    return clock, store, ReadinessGate(store)


def test_warm_service_answers_at_once_without_scheduling():
    clock, store, gate = make()
    load(store, slices=[endpoint_slice()])
    d = gate.wait("default/web", "http")
    assert d.called and d.result == (False, "127.0.0.1:8080")
    assert clock.getDelayedCalls() == []


def test_pod_host_is_empty_when_the_port_name_has_no_ready_pod():
    clock, store, gate = make()
    load(store, slices=[endpoint_slice(ports=(("http", 8080),))])
    d = gate.wait("default/web", "metrics")
    assert d.result == (False, "")


def test_unnamed_ports_are_found_under_the_empty_name():
    clock, store, gate = make()
    load(store, slices=[endpoint_slice(ports=(("", 9000),))])
    assert gate.wait("default/web").result == (False, "127.0.0.1:9000")


def test_ipv6_pod_host_is_bracketed():
    clock, store, gate = make()
    load(store, slices=[endpoint_slice(ips=("fd00::1",))])
    assert gate.wait("default/web", "http").result == (False, "[fd00::1]:8080")
    assert split_host_port("[fd00::1]:8080") == ("fd00::1", 8080)


def test_the_selector_picks_among_the_candidates_of_the_port_name():
    clock, store, gate = make()
    seen = []

    @implementer(IEndpointSelector)
    class Last:
        def select(self, candidates, request):
            seen.append((candidates, request))
            return candidates[-1]

    gate.selector = Last()
    load(store, slices=[endpoint_slice(ips=("10.0.0.2", "10.0.0.1"),
                                       ports=(("http", 8080), ("admin", 9090)))])
    assert gate.wait("default/web", "admin", "facts").result == (False, "10.0.0.2:9090")
    assert seen == [((("10.0.0.1", 9090), ("10.0.0.2", 9090)), "facts")]


def test_cold_service_fires_when_the_snapshot_flips_to_ready():
    clock, store, gate = make()
    d = gate.wait("default/web", "http")
    results = []
    d.addCallback(results.append)
    assert gate.waiting("default/web") == 1
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice(ips=("10.0.0.7",)))
    assert results == []  # coalesced: not yet rebuilt
    clock.advance(store.coalesce)
    assert results == [(True, "10.0.0.7:8080")]
    assert gate.waiting() == 0


def test_the_pod_is_chosen_from_the_snapshot_at_release():
    clock, store, gate = make()
    gate.batch = 1
    first, second = gate.wait("default/web", "http"), gate.wait("default/web", "http")
    load(store, slices=[endpoint_slice(ips=("10.0.0.1",))])
    assert first.result == (True, "10.0.0.1:8080")
    assert not second.called  # its turn is next
    load(store, slices=[endpoint_slice(ips=("10.0.0.2",))])  # the first pod went away
    clock.advance(0)
    assert second.result == (True, "10.0.0.2:8080")


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


def test_split_host_port_refuses_what_join_never_writes():
    for bad in ("10.0.0.1", "fd00::1:80", "[10.0.0.1]:80", "host:http", ":"):
        with pytest.raises(ValueError):
            split_host_port(bad)
    assert split_host_port("10.0.0.1:80") == ("10.0.0.1", 80)


class Waiter:
    def __init__(self):
        self.calls = []

    def ready(self, pod):
        self.calls.append(pod)


def test_hold_gives_the_waiter_the_pod_pair_once():
    clock, store, gate = make()
    waiter, other = Waiter(), Waiter()
    gate.hold("default/web", "http", None, waiter)
    gate.hold("default/web", "metrics", None, other)  # no such port: None
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice(ips=("fd00::1",)))
    store.flush()
    assert waiter.calls == [("fd00::1", 8080)]
    assert other.calls == [None]
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice(ips=("fd00::2",)))
    store.flush()
    clock.advance(0)
    assert waiter.calls == [("fd00::1", 8080)]
    assert gate.waiting() == 0 and gate._waiters == {}


def test_a_hold_withdrawn_after_waking_is_skipped():
    clock, store, gate = make()
    waiters = [Waiter() for _ in range(100)]
    holds = [gate.hold("default/web", "http", None, w) for w in waiters]
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice())
    store.flush()
    assert [len(w.calls) for w in waiters] == [1] * gate.batch + [0] * (100 - gate.batch)
    gate.unhold(holds[50])  # woken, waiting for its turn: the client left
    gate.unhold(holds[0])  # already released: nothing happens
    clock.advance(0)
    assert [len(w.calls) for w in waiters] == [0 if i == 50 else 1 for i in range(100)]
    assert not gate._releasing


def test_wait_cancelled_after_waking_is_not_fired():
    clock, store, gate = make()
    waits = [gate.wait("default/web", "http") for _ in range(gate.batch + 1)]
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice())
    store.flush()
    last = waits[-1]
    assert not last.called
    failures = []
    last.addErrback(failures.append)
    last.cancel()
    clock.advance(0)
    assert failures[0].check(CancelledError)  # cancelled, never called back
    assert all(d.result == (True, "127.0.0.1:8080") for d in waits[:-1])


def test_the_await_steps_holds_and_the_deferred_waiter_are_held_requests():
    from zope.interface.verify import verifyClass

    from keda_proxy.interfaces import IHeldRequest
    from keda_proxy.steps._await import _Held
    from keda_proxy.steps._readiness import _DeferredWaiter

    assert verifyClass(IHeldRequest, _Held)
    assert verifyClass(IHeldRequest, _DeferredWaiter)


def test_holds_are_counted_per_route_until_woken_or_withdrawn():
    clock, store, gate = make()
    a = [gate.hold("default/web", "http", None, Waiter(), "default/a") for _ in range(3)]
    gate.hold("default/web", "http", None, Waiter(), "default/b")
    gate.hold("default/web", "http", None, Waiter())  # no route: not counted
    assert gate.held_for_route("default/web", "default/a") == 3
    assert gate.held_for_route("default/web", "default/b") == 1
    assert gate.held_for_route("default/other", "default/a") == 0
    gate.unhold(a[0])
    gate.unhold(a[0])  # twice: counted out once
    assert gate.held_for_route("default/web", "default/a") == 2
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice())
    store.flush()
    assert gate.held_for_route("default/web", "default/a") == 0
    assert gate.held_for_route("default/web", "default/b") == 0
    gate.unhold(a[1])  # woken already: nothing left to count out
    assert gate._route_counts == {}


def test_route_counts_are_forgotten_when_their_last_hold_goes():
    clock, store, gate = make()
    holds = [gate.hold("default/web", "http", None, Waiter(), key)
             for key in ("default/a", "default/b")]
    gate.unhold(holds[0])
    assert gate._route_counts == {"default/web": {"default/b": 1}}
    gate.unhold(holds[1])
    assert gate._route_counts == {} and gate._waiters == {}
