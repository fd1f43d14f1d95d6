"""
Item-by-item decoding of list responses (keda_proxy.state._kube_json) gives exactly
what json.loads gives, for any JSON object, however it is laid out.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keda_proxy.state._kube_json import ITEM, iter_list

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


def rebuild(text):
    """The object back from iter_list's members."""
    out, items = {}, None
    for key, value in iter_list(text):
        if key is ITEM:
            items = [] if items is None else items
            items.append(value)
        else:
            out[key] = value
    if items is not None:
        out["items"] = items
    return out


@given(st.dictionaries(st.text(), values, max_size=5),
       st.lists(values, max_size=6), st.sampled_from([None, 0, 2]))
def test_same_as_json_loads(members, items, indent):
    doc = dict(members, items=items)
    text = json.dumps(doc, indent=indent)
    expected = json.loads(text)
    got = rebuild(text)
    if not items:  # an empty list yields no ITEM at all
        got.setdefault("items", [])
    assert got == expected


def test_a_typical_list_streams_items_in_order():
    text = json.dumps({"kind": "ServiceList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": "42"},
                       "items": [{"n": 1}, {"n": 2}, {"n": 3}]})
    members = list(iter_list(text))
    assert members[:3] == [("kind", "ServiceList"), ("apiVersion", "v1"),
                           ("metadata", {"resourceVersion": "42"})]
    assert [v for k, v in members[3:] if k is ITEM] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_items_that_are_not_a_list_come_whole():
    assert list(iter_list('{"items": null}')) == [("items", None)]
    assert list(iter_list(' { } ')) == []


@pytest.mark.parametrize("text", [
    "", "[]", '{"items": [{"a": 1}', '{"a": 1', '{"a" 1}', '{"a": 1} x',
    '{"items": [1 2]}', '{1: 2}',
])
def test_malformed_input_raises_value_error(text):
    with pytest.raises(ValueError):
        list(iter_list(text))
