"""Go duration strings, as the KEDA env vars and route timeouts spell them."""

import pytest

from keda_proxy.state._duration import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h45m", 9900.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("-1.5h", -5400.0),
        ("+5s", 5.0),
        ("1h2m3s4ms", 3723.004),
        ("300s", 300.0),
        ("60m", 3600.0),
        ("250us", 250e-6),
        ("250\u00b5s", 250e-6),  # micro sign
        ("250\u03bcs", 250e-6),  # Greek mu
        ("7ns", 7e-9),
        ("1s500ms", 1.5),
    ],
)
def test_parse_valid(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "text",
    ["30", "", "abc", "1x", "s", "--1s", "-", "1.5", "1s2", "5 seconds", "1S"],
)
def test_parse_invalid(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_missing_unit_is_named():
    """A bare number is the most common mistake; the error says what is wrong."""
    with pytest.raises(ValueError, match="missing unit"):
        parse_duration("30")


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError):
        parse_duration(30)

