"""Tests for keda_proxy.wire._memo: bounded memo tables."""

from keda_proxy.wire._memo import remember


def test_a_full_table_is_emptied_before_the_next_entry():
    table = {}
    assert [remember(table, i, i * i, limit=3) for i in range(3)] == [0, 1, 4]
    assert table == {0: 0, 1: 1, 2: 4}
    assert remember(table, 3, 9, limit=3) == 9
    assert table == {3: 9}
