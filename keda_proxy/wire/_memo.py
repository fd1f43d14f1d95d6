"""
Bounded memo tables, for answers worked out once per value that repeats:
header names and lines, upstream addresses.

Readers look a key up in the dict directly (a call per lookup would cost
what the table saves); L{remember} stores what was worked out.
"""

from __future__ import annotations

#: entries a table holds before it is emptied
LIMIT = 4096


def remember(table: dict, key, value, limit: int = LIMIT):
    """Keep C{key -> value} and return C{value}.  A full table is emptied
    first: values that do not repeat (request ids, odd names) cannot pile
    up, and those that do are back after one miss."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
