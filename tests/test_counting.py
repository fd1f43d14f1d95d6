"""Tests for keda_proxy.steps._counting: the numbers KEDA scales on."""

from keda_proxy.steps._counting import QueueCounter


def test_enter_counts_in_and_release_counts_out_once():
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    t1 = c.enter("ns/a")
    t2 = c.enter("ns/a")
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 2, "RequestCount": 2}}
    t1.release()
    t1.release()  # a second ending of the same request changes nothing
    assert c.get("ns/a").concurrency == 1
    t2.release()
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 2}}


def test_every_known_route_is_listed_at_zero_and_removed_routes_vanish():
    c = QueueCounter()
    c.sync_keys(["ns/a", "ns/b"])
    assert c.as_json_dict() == {
        "ns/a": {"Concurrency": 0, "RequestCount": 0},
        "ns/b": {"Concurrency": 0, "RequestCount": 0},
    }
    c.enter("ns/a")
    c.sync_keys(["ns/a"])
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 1, "RequestCount": 1}}


def test_a_route_removed_in_flight_never_goes_negative_when_recreated():
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    ticket = c.enter("ns/a")
    c.sync_keys([])
    c.sync_keys(["ns/a"])
    ticket.release()
    ticket.release()
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 1}}


def test_requests_held_across_delete_and_recreate_stay_counted():
    """A route deleted and re-created while requests wait on it: the held
    requests are still in its Concurrency, which is what KEDA scales on."""
    c = QueueCounter()
    c.sync_keys(["ns/a", "ns/b"])
    c.enter("ns/a").release()
    tickets = [c.enter("ns/a") for _ in range(3)]
    c.sync_keys(["ns/b"])
    assert c.as_json_dict() == {"ns/b": {"Concurrency": 0, "RequestCount": 0}}
    c.sync_keys(["ns/a", "ns/b"])
    assert c.as_json_dict()["ns/a"] == {"Concurrency": 3, "RequestCount": 4}
    c.enter("ns/a").release()
    assert c.as_json_dict()["ns/a"] == {"Concurrency": 3, "RequestCount": 5}
    for t in tickets:
        t.release()
    assert c.as_json_dict()["ns/a"] == {"Concurrency": 0, "RequestCount": 5}
    assert c.in_flight() == 0


def test_a_route_removed_idle_comes_back_clean():
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    c.enter("ns/a").release()
    c.sync_keys([])
    c.sync_keys(["ns/a"])
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 0}}


def test_a_removed_route_never_recreated_is_forgotten_once_its_requests_end():
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    tickets = [c.enter("ns/a") for _ in range(2)]
    c.sync_keys([])
    assert c.as_json_dict() == {}
    assert c.in_flight() == 2
    tickets[0].release()
    assert c.in_flight() == 1
    tickets[1].release()
    assert c.in_flight() == 0
    assert c._absent == {}  # nothing kept for a route that is gone
    c.sync_keys(["ns/a"])
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 0}}


def test_entering_a_removed_key_revives_its_count():
    """A plugin may route to a key that is not in the table: it is listed
    from then on, with the requests still in flight under it."""
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    held = c.enter("ns/a")
    c.sync_keys([])
    extra = c.enter("ns/a")
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 2, "RequestCount": 2}}
    held.release()
    extra.release()
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 2}}


def test_entering_an_unknown_key_lists_it():
    c = QueueCounter()
    c.sync_keys(["ns/a"])
    t = c.enter("ns/plugin")
    assert c.as_json_dict() == {
        "ns/a": {"Concurrency": 0, "RequestCount": 0},
        "ns/plugin": {"Concurrency": 1, "RequestCount": 1},
    }
    t.release()
    assert c.get("ns/plugin").concurrency == 0


def test_request_count_is_monotonic():
    c = QueueCounter()
    seen = []
    for _ in range(5):
        c.enter("ns/a").release()
        seen.append(c.get("ns/a").request_count)
    assert seen == [1, 2, 3, 4, 5]


def test_draining_waits_for_requests_of_a_removed_route():
    from twisted.internet.task import Clock

    from keda_proxy._app import _wait_idle

    clock, c = Clock(), QueueCounter()
    c.sync_keys(["ns/a"])
    ticket = c.enter("ns/a")
    c.sync_keys([])  # the route is deleted while its request is held
    d = _wait_idle(clock, c.in_flight, timeout=0)
    clock.advance(1)
    assert not d.called
    ticket.release()
    clock.advance(1)
    assert d.called
