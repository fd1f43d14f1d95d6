"""
Go duration strings ("500ms", "1m30s", "-1.5h"), as KEDA's env vars and
``metav1.Duration`` fields use them, parsed to float seconds.
"""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string to seconds.

    Accepts what Go's ``time.ParseDuration`` accepts: an optional sign, then
    one or more decimal numbers each with a unit (ns, us, µs, ms, s, m, h),
    or the bare string "0".  Raises L{ValueError} otherwise; a bare number
    such as "30" is an error, as in Go.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")
    s = text.strip()
    orig = text
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {orig!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            if s[pos:].replace(".", "", 1).isdigit():
                raise ValueError(f"missing unit in duration {orig!r}")
            raise ValueError(f"invalid duration {orig!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total

