"""Tests for keda_proxy.state._store: immutable snapshots, coalesced rebuilds."""

import attrs
from twisted.internet.task import Clock

from keda_proxy.state._model import (
    ALL_KINDS,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
)
from keda_proxy.state._store import StateStore
from tests.builders import endpoint_slice, load, route


def make():
    clock = Clock()
    store = StateStore(clock=clock)
    swaps = []
    store.subscribe(lambda old, new: swaps.append((old, new)))
    return clock, store, swaps


def test_a_change_after_a_quiet_spell_applies_on_the_next_turn():
    clock, store, swaps = make()
    store.put(KIND_INTERCEPTOR_ROUTE, "default/web", route())
    assert swaps == []  # never inside the caller's own turn
    clock.advance(0)
    assert len(swaps) == 1
    assert list(store.current.routes) == ["default/web"]


def test_a_burst_is_coalesced_into_one_rebuild_per_window():
    clock, store, swaps = make()
    store.put(KIND_INTERCEPTOR_ROUTE, "default/a", route(name="a"))
    clock.advance(0)
    for i in range(50):  # right after a rebuild: wait for the window
        store.put(KIND_ENDPOINT_SLICE, f"default/s{i}", endpoint_slice(name=f"s{i}"))
        clock.advance(store.coalesce / 100)
    clock.advance(store.coalesce)
    assert len(swaps) == 2
    assert store.current.endpoints_for("default/web").ready


def test_snapshots_are_new_values_and_unchanged_parts_are_shared():
    clock, store, swaps = make()
    load(store, routes=[route()], slices=[endpoint_slice()])
    before = store.current
    store.put(KIND_ENDPOINT_SLICE, "default/web-abc", endpoint_slice(ready=False))
    after = store.flush()
    assert after is not before
    assert after.routes is before.routes and after.table is before.table
    assert before.endpoints_for("default/web").ready  # the old value is untouched
    assert not after.endpoints_for("default/web").ready
    assert after.generation == before.generation + 1


def test_synced_only_once_every_expected_kind_was_listed():
    clock = Clock()
    store = StateStore(clock=clock, expected_kinds=frozenset(ALL_KINDS))
    store.replace(KIND_INTERCEPTOR_ROUTE, {})
    assert not store.flush().synced
    load(store)
    assert store.current.synced


def test_an_interceptor_route_shadows_the_scaled_object_of_the_same_name():
    clock, store, _ = make()
    ir = route(hosts=["ir.example"])
    hso = attrs.evolve(route(hosts=["hso.example"]), kind=KIND_HTTP_SCALED_OBJECT)
    store.replace(KIND_HTTP_SCALED_OBJECT, {hso.key: hso})
    store.replace(KIND_INTERCEPTOR_ROUTE, {ir.key: ir})
    snap = store.flush()
    assert snap.routes["default/web"] is ir
    store.remove(KIND_INTERCEPTOR_ROUTE, ir.key)
    assert store.flush().routes["default/web"] is hso


def test_a_slice_moving_to_another_service_updates_both():
    clock, store, _ = make()
    load(store, slices=[endpoint_slice(service="a", name="s")])
    assert store.current.endpoints_for("default/a").ready
    store.put(KIND_ENDPOINT_SLICE, "default/s", endpoint_slice(service="b", name="s"))
    snap = store.flush()
    assert not snap.endpoints_for("default/a").ready
    assert snap.endpoints_for("default/b").ready
    store.remove(KIND_ENDPOINT_SLICE, "default/s")
    assert "default/b" not in store.flush().endpoints
