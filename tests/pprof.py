"""
A small reader of pprof profiles (github.com/google/pprof's
proto/profile.proto), written from the message definitions for the tests:
it decodes the protocol buffers wire format on its own, so that it checks
keda_proxy.ops._profiling's writer rather than sharing code with it.
"""

from __future__ import annotations

import gzip

from attrs import define, field


def _varint(buf: bytes, i: int) -> tuple:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def fields(buf: bytes):
    """(field number, wire type, value) of each field of a message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value = buf[i:i + size]
            i += size
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        yield number, wire, value
    if i != len(buf):
        raise ValueError("truncated message")


def _numbers(wire: int, value) -> list:
    """A repeated integer field's values, packed or not."""
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        n, i = _varint(value, i)
        out.append(n)
    return out


@define
class Sample:
    location_ids: list
    values: list
    labels: dict


@define
class Profile:
    strings: list = field(factory=list)
    sample_types: list = field(factory=list)  # [(type, unit)]
    samples: list = field(factory=list)
    mappings: list = field(factory=list)  # [{field: value}]
    locations: dict = field(factory=dict)  # id -> [(function id, line)]
    location_mapping: dict = field(factory=dict)  # id -> mapping id
    functions: dict = field(factory=dict)  # id -> (name, system name, file, start)
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: tuple = ()
    period: int = 0
    comments: list = field(factory=list)

    def stacks(self):
        """(thread label, [function names, innermost first], values)."""
        for s in self.samples:
            names = [self.functions[fid][0] for lid in s.location_ids
                     for fid, _ in self.locations[lid]]
            yield s.labels.get("thread"), names, s.values

    def function_names(self) -> set:
        return {f[0] for f in self.functions.values()}


def parse(data: bytes) -> Profile:
    """A profile from its bytes, gzipped or not (as pprof reads them)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    raw = {"sample_type": [], "sample": [], "location": [], "function": [],
           "period_type": None, "comment": []}
    p = Profile()
    for number, wire, value in fields(data):
        if number == 1:
            raw["sample_type"].append(value)
        elif number == 2:
            raw["sample"].append(value)
        elif number == 3:
            p.mappings.append({n: v for n, _, v in fields(value)})
        elif number == 4:
            raw["location"].append(value)
        elif number == 5:
            raw["function"].append(value)
        elif number == 6:
            p.strings.append(value.decode("utf-8"))
        elif number == 9:
            p.time_nanos = value
        elif number == 10:
            p.duration_nanos = value
        elif number == 11:
            raw["period_type"] = value
        elif number == 12:
            p.period = value
        elif number == 13:
            raw["comment"].extend(_numbers(wire, value))
    s = p.strings

    def value_type(buf):
        d = {n: v for n, _, v in fields(buf)}
        return s[d.get(1, 0)], s[d.get(2, 0)]

    p.sample_types = [value_type(b) for b in raw["sample_type"]]
    if raw["period_type"] is not None:
        p.period_type = value_type(raw["period_type"])
    p.comments = [s[i] for i in raw["comment"]]
    for buf in raw["sample"]:
        ids, values, labels = [], [], {}
        for n, wire, v in fields(buf):
            if n == 1:
                ids.extend(_numbers(wire, v))
            elif n == 2:
                values.extend(_numbers(wire, v))
            elif n == 3:
                d = {k: x for k, _, x in fields(v)}
                labels[s[d.get(1, 0)]] = s[d.get(2, 0)]
        p.samples.append(Sample(ids, values, labels))
    for buf in raw["location"]:
        lid, mapping, lines = 0, 0, []
        for n, _, v in fields(buf):
            if n == 1:
                lid = v
            elif n == 2:
                mapping = v
            elif n == 4:
                d = {k: x for k, _, x in fields(v)}
                lines.append((d.get(1, 0), d.get(2, 0)))
        p.locations[lid] = lines
        p.location_mapping[lid] = mapping
    for buf in raw["function"]:
        d = {n: v for n, _, v in fields(buf)}
        p.functions[d.get(1, 0)] = (s[d.get(2, 0)], s[d.get(3, 0)], s[d.get(4, 0)],
                                    d.get(5, 0))
    return p


def check_valid(p: Profile) -> None:
    """What pprof's own CheckValid asks of a profile."""
    assert p.strings and p.strings[0] == ""
    assert p.sample_types
    for sample in p.samples:
        assert len(sample.values) == len(p.sample_types)
        for lid in sample.location_ids:
            assert lid in p.locations
    mapping_ids = {m.get(1) for m in p.mappings}
    for lid, lines in p.locations.items():
        assert lid != 0
        assert p.location_mapping[lid] in mapping_ids | {0}
        for fid, _ in lines:
            assert fid in p.functions
