"""Tests for keda_proxy.counting: the numbers KEDA scales on."""

from keda_proxy.counting import QueueCounter


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
    assert c.as_json_dict() == {"ns/a": {"Concurrency": 0, "RequestCount": 0}}


def test_request_count_is_monotonic():
    c = QueueCounter()
    seen = []
    for _ in range(5):
        c.enter("ns/a").release()
        seen.append(c.get("ns/a").request_count)
    assert seen == [1, 2, 3, 4, 5]
