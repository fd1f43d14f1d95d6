"""keda_proxy.downstream._http1.parse_request_line answers as twisted.web's parser does."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.web.http import _parseRequestLine

from keda_proxy.downstream._http1 import parse_request_line

# bytes around every boundary the two parsers look at
ALPHABET = st.sampled_from(
    [bytes([c]) for c in (0, 9, 10, 13, 32, 33, 34, 40, 47, 58, 126, 127, 176, 177, 255)]
    + [b"G", b"E", b"T", b"/", b"a", b"%", b"~", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"])


def outcome(parse, line):
    try:
        return parse(line)
    except ValueError:
        return ValueError


@settings(max_examples=2000, deadline=None)
@given(st.lists(ALPHABET, max_size=12).map(b"".join))
@example(b"GET / HTTP/1.1")
@example(b" / HTTP/1.1")
@example(b"GET  HTTP/1.1")
@example(b"GET /\xb0 HTTP/1.1")
@example(b"GET /\xb1 HTTP/1.1")
@example(b"G(T / HTTP/1.0")
def test_the_same_answer_as_twisted_web(line):
    assert outcome(parse_request_line, line) == outcome(_parseRequestLine, line)


@pytest.mark.parametrize("line", [b"GET /a?b=c HTTP/1.1", b"PATCH * HTTP/1.0"])
def test_well_formed_lines_parse(line):
    assert parse_request_line(line) == tuple(line.split(b" "))
