"""
Tests for keda_proxy.state._routing: examples for each rule, then a property test
against a brute-force reference matcher.
"""

from functools import cmp_to_key
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from keda_proxy.interfaces import IRouter
from keda_proxy.state import _routing as routing
from keda_proxy.state._model import HeaderMatch, RequestFacts, Route, RoutingRule, ServiceRef
from keda_proxy.state._routing import (
    RoutingTable,
    host_to_ascii,
    normalize_host,
    normalize_path,
    rule_matches,
)


def rule(hosts=(), paths=(), headers=()):
    """A rule; ``headers`` is a mapping of name to value (None = present)."""
    return RoutingRule(
        hosts=tuple(hosts),
        paths=tuple(paths),
        headers=tuple(HeaderMatch(n, v) for n, v in dict(headers).items()),
    )


def mk(name, hosts=(), paths=(), headers=(), ts="", ns="default", rules=None):
    """A route with one rule built from the keyword arguments, or ``rules``."""
    if rules is None:
        rules = (rule(hosts, paths, headers),)
    return Route(
        namespace=ns,
        name=name,
        target=ServiceRef(name=f"{name}-svc", port=80),
        rules=tuple(rules),
        creation_timestamp=ts,
    )


def facts(host="example.com", path="/", headers=None):
    return RequestFacts.from_mapping(normalize_host(host), path, headers or {})


def routed(routes, host="example.com", path="/", headers=None):
    """The name of the chosen route, or None."""
    found = RoutingTable.build(routes).route(facts(host, path, headers))
    return None if found is None else found.name


def both_orders(routes, **request):
    """Route with ``routes`` in given and reversed order; both must agree,
    so that insertion order can never be what decides."""
    first = routed(routes, **request)
    assert routed(list(reversed(routes)), **request) == first
    return first


# -- the table as a component ---------------------------------------------


def test_provides_irouter():
    table = RoutingTable.build([mk("a", hosts=["example.com"])])
    assert verifyObject(IRouter, table)


def test_len_counts_routes_not_keys():
    routes = [
        mk("a", hosts=["a.com", "b.com"], paths=["/x", "/y"]),
        mk("b", rules=()),
    ]
    assert len(RoutingTable.build(routes)) == 2
    assert len(RoutingTable.build([])) == 0


def test_empty_table_routes_nothing():
    assert routed([]) is None


def test_build_accepts_any_iterable():
    table = RoutingTable.build(mk(n, hosts=[f"{n}.com"]) for n in "ab")
    assert table.route(facts("b.com")).name == "b"


# -- hosts ----------------------------------------------------------------


def test_exact_beats_wildcard():
    routes = [mk("wild", hosts=["*.example.com"]), mk("exact", hosts=["a.example.com"])]
    assert both_orders(routes, host="a.example.com") == "exact"
    assert both_orders(routes, host="b.example.com") == "wild"


def test_specific_wildcard_beats_broad():
    routes = [mk("broad", hosts=["*.example.com"]), mk("narrow", hosts=["*.b.example.com"])]
    assert both_orders(routes, host="a.b.example.com") == "narrow"
    assert both_orders(routes, host="a.c.example.com") == "broad"


def test_wildcard_beats_catch_all():
    routes = [mk("any", hosts=["*"]), mk("wild", hosts=["*.com"])]
    assert both_orders(routes, host="example.com") == "wild"
    assert both_orders(routes, host="localhost") == "any"


@pytest.mark.parametrize("catch_all", [["*"], [""], []])
def test_catch_all_forms_are_last(catch_all):
    routes = [mk("any", hosts=catch_all), mk("exact", hosts=["example.com"])]
    assert both_orders(routes, host="example.com") == "exact"
    assert both_orders(routes, host="other.org") == "any"
    assert both_orders(routes, host="") == "any"


def test_wildcard_matches_one_or_more_labels_but_not_apex():
    routes = [mk("wild", hosts=["*.example.com"])]
    assert routed(routes, host="a.example.com") == "wild"
    assert routed(routes, host="a.b.example.com") == "wild"
    assert routed(routes, host="example.com") is None
    assert routed(routes, host="badexample.com") is None
    # An empty first label is no label: the wildcard needs one before it.
    assert routed(routes, host=".example.com") is None
    assert not rule_matches(rule(hosts=["*.example.com"]), facts(".example.com"))


def test_host_is_case_insensitive():
    routes = [mk("a", hosts=["Example.COM"]), mk("w", hosts=["*.Example.Com"])]
    assert routed(routes, host="EXAMPLE.com") == "a"
    assert routed(routes, host="WWW.example.COM") == "w"


def test_ports_are_ignored_on_both_sides():
    routes = [mk("a", hosts=["example.com:8080"])]
    assert routed(routes, host="example.com") == "a"
    assert routed(routes, host="example.com:9090") == "a"


def test_trailing_dot_is_the_same_host():
    routes = [mk("a", hosts=["example.com."])]
    assert routed(routes, host="example.com") == "a"
    assert routed(routes, host="example.com.:80") == "a"


@pytest.mark.parametrize("configured", ["[fd00::1]:8080", "fd00::1", "[FD00::1]"])
@pytest.mark.parametrize("header", ["[fd00::1]:8080", "[fd00::1]", "fd00::1"])
def test_ipv6_literal_hosts(configured, header):
    routes = [mk("v6", hosts=[configured]), mk("any", hosts=["*"])]
    assert routed(routes, host=header) == "v6"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("example.com:", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        ("[fd00::1]:8080", "fd00::1"),
        ("[::1]", "::1"),
        ("fd00::1", "fd00::1"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
        ("10.0.0.1:80", "10.0.0.1"),
        (" example.com ", "example.com"),
        ("", ""),
    ],
)
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


def test_wildcard_with_empty_suffix_matches_nothing():
    routes = [mk("junk", hosts=["*."]), mk("a", hosts=["a.com"])]
    assert routed(routes, host="x.com") is None


# -- internationalised hosts ------------------------------------------------


BUCHER = "xn--bcher-kva.example"


def test_unicode_host_matches_its_punycode_form():
    routes = [mk("idn", hosts=["bücher.example"]), mk("any", hosts=["*"])]
    assert routed(routes, host=BUCHER) == "idn"
    assert routed(routes, host="XN--BCHER-KVA.example:443") == "idn"
    assert rule_matches(rule(hosts=["Bücher.Example"]), facts(BUCHER))


def test_unicode_wildcard_converts_the_labels_after_the_star():
    routes = [mk("idn", hosts=["*.bücher.example"]), mk("any", hosts=["*"])]
    assert routed(routes, host=f"shop.{BUCHER}") == "idn"
    assert routed(routes, host=BUCHER) == "any"
    assert rule_matches(rule(hosts=["*.bücher.example"]), facts(f"a.b.{BUCHER}"))


def test_raw_utf8_host_header_is_not_converted():
    """A client that sends the Unicode name as raw bytes (decoded byte for
    byte, as the proxy does) does not reach the internationalised route."""
    routes = [mk("idn", hosts=["bücher.example"])]
    assert routed(routes, host="bücher.example".encode().decode("latin-1")) is None
    assert routed(routes, host="bücher.example") is None


def test_invalid_unicode_host_matches_nothing():
    routes = [mk("bad", hosts=["ab--ü.example", "ok.example"])]
    assert routed(routes, host="ok.example") == "bad"
    assert routed(routes, host="ab--ü.example") is None
    assert not rule_matches(rule(hosts=["ab--ü.example"]), facts("ab--ü.example"))


@pytest.mark.parametrize("raw, expected", [
    ("bücher.example", BUCHER),
    ("Bücher.EXAMPLE", BUCHER),
    ("*.bücher.example", f"*.{BUCHER}"),
    ("bücher.example.", f"{BUCHER}."),
    ("bücher.example:8080", f"{BUCHER}:8080"),
    ("ｂücher。example", BUCHER),  # UTS 46 maps full-width forms
    ("_svc.bücher.example", f"_svc.{BUCHER}"),  # ASCII labels are kept
    ("shop.Example.com", "shop.Example.com"),  # ASCII: unchanged
    ("*", "*"),
    ("", ""),
])
def test_host_to_ascii(raw, expected):
    assert host_to_ascii(raw) == expected


@pytest.mark.parametrize("raw", [
    "ab--ü.example",  # hyphens in the 3rd and 4th positions
    "a\u200db.ü.example",  # a joiner out of context
    "\u0301ü.example",  # a leading combining mark
    "ü" * 64 + ".example",  # a label longer than 63
    "bü cher.example",
])
def test_host_to_ascii_rejects_invalid_names(raw):
    with pytest.raises(ValueError):
        host_to_ascii(raw)


def test_host_to_ascii_without_the_idna_package(monkeypatch):
    monkeypatch.setattr(routing, "_idna", None)
    assert host_to_ascii("*.Bücher.example") == f"*.{BUCHER}"
    assert host_to_ascii("shop.example") == "shop.example"
    with pytest.raises(ValueError):
        host_to_ascii("ü" * 64 + ".example")


# -- paths ----------------------------------------------------------------


def test_paths_match_on_segment_boundaries():
    routes = [mk("api", hosts=["example.com"], paths=["/api"])]
    assert routed(routes, path="/api") == "api"
    assert routed(routes, path="/api/") == "api"
    assert routed(routes, path="/api/x/y") == "api"
    assert routed(routes, path="/apix") is None
    assert routed(routes, path="/") is None


def test_longest_prefix_wins():
    routes = [
        mk("root", hosts=["example.com"]),
        mk("api", hosts=["example.com"], paths=["/api"]),
        mk("v1", hosts=["example.com"], paths=["/api/v1"]),
    ]
    assert both_orders(routes, path="/api/v1/users") == "v1"
    assert both_orders(routes, path="/api/v2") == "api"
    assert both_orders(routes, path="/apiv1") == "root"
    assert both_orders(routes, path="/") == "root"
    assert both_orders(routes, path="") == "root"


def test_configured_slashes_are_trimmed():
    assert normalize_path("//api/v1//") == "api/v1"
    assert normalize_path("/") == ""
    routes = [mk("api", hosts=["example.com"], paths=["/api/"])]
    assert routed(routes, path="/api") == "api"
    assert routed(routes, path="//api//") == "api"


def test_request_path_is_percent_decoded():
    routes = [
        mk("root", hosts=["example.com"]),
        mk("api", hosts=["example.com"], paths=["/api/v1"]),
        mk("cafe", hosts=["example.com"], paths=["/café"]),
    ]
    assert routed(routes, path="/%61pi/v1") == "api"
    assert routed(routes, path="/api%2Fv1/x") == "api"
    assert routed(routes, path="/caf%C3%A9") == "cafe"
    # The proxy hands over raw bytes decoded as latin-1; as text or as
    # latin-1-decoded UTF-8, the path is the same.
    assert routed(routes, path="/café/x") == "cafe"
    assert routed(routes, path="/café/x".encode().decode("latin-1")) == "cafe"


def test_request_path_is_not_dot_segment_cleaned():
    """Paths are compared as sent (after percent-decoding): no dot-segment
    removal, so a path rule is not an access-control list."""
    routes = [
        mk("admin", hosts=["example.com"], paths=["/admin"]),
        mk("public", hosts=["example.com"], paths=["/public"]),
    ]
    assert both_orders(routes, path="/public/../admin") == "public"
    assert both_orders(routes, path="/public/%2e%2e/admin") == "public"
    assert both_orders(routes, path="/admin/../public") == "admin"
    assert both_orders(routes, path="/./admin") is None
    assert both_orders(routes, path="/public//admin") == "public"
    # percent-decoding and leading slashes do not hide a prefix
    assert both_orders(routes, path="/%61dmin") == "admin"
    assert both_orders(routes, path="//admin") == "admin"
    assert not rule_matches(rule(paths=["/admin"]), facts(path="/public/../admin"))
    assert rule_matches(rule(paths=["/public"]), facts(path="/public/../admin"))
    # so a static route on /admin does not see these requests
    assert rule_matches(rule(paths=["/admin"]), facts(path="/%61dmin/x"))
    assert not rule_matches(rule(paths=["/admin"]), facts(path="/x/%2e%2e/admin"))


def test_longest_prefix_is_per_host():
    # /api/v1 under another host must not shadow example.com's /api.
    routes = [
        mk("api", hosts=["example.com"], paths=["/api"]),
        mk("other", hosts=["other.com"], paths=["/api/v1"]),
    ]
    assert routed(routes, path="/api/v1") == "api"


# -- headers --------------------------------------------------------------


def test_all_headers_must_match():
    routes = [mk("h", hosts=["example.com"], headers={"X-A": "1", "X-B": "2"})]
    assert routed(routes, headers={"x-a": ["1"], "x-b": ["2"]}) == "h"
    assert routed(routes, headers={"x-a": ["1"]}) is None
    assert routed(routes, headers={"x-a": ["1"], "x-b": ["3"]}) is None


def test_header_value_is_exact_and_any_value_may_match():
    routes = [mk("h", hosts=["example.com"], headers={"X-Version": "v1"})]
    assert routed(routes, headers={"X-VERSION": ["v0", "v1"]}) == "h"
    assert routed(routes, headers={"x-version": ["V1"]}) is None
    assert routed(routes, headers={"x-version": ["v1 "]}) is None
    assert routed(routes, headers={"x-version": ["v1,v2"]}) is None


def test_valueless_header_means_present():
    routes = [mk("h", hosts=["example.com"], headers={"X-Canary": None})]
    assert routed(routes, headers={"x-canary": ["anything"]}) == "h"
    assert routed(routes, headers={"x-canary": [""]}) == "h"
    assert routed(routes, headers={"x-other": ["1"]}) is None
    assert routed(routes) is None


def test_empty_value_is_a_value():
    routes = [mk("h", hosts=["example.com"], headers={"X-Flag": ""})]
    assert routed(routes, headers={"x-flag": [""]}) == "h"
    assert routed(routes, headers={"x-flag": ["1"]}) is None


# -- tie-breaks within one (host, path) key --------------------------------


def test_more_headers_first():
    routes = [
        mk("one", hosts=["example.com"], headers={"x-a": None}, ts="2020-01-01T00:00:00Z"),
        mk("two", hosts=["example.com"], headers={"x-a": None, "x-b": None},
           ts="2024-01-01T00:00:00Z"),
    ]
    assert both_orders(routes, headers={"x-a": ["1"], "x-b": ["1"]}) == "two"
    assert both_orders(routes, headers={"x-a": ["1"]}) == "one"


def test_more_valued_headers_first():
    routes = [
        mk("present", hosts=["example.com"], headers={"x-a": None}, ts="2020-01-01T00:00:00Z"),
        mk("valued", hosts=["example.com"], headers={"x-a": "1"}, ts="2024-01-01T00:00:00Z"),
    ]
    assert both_orders(routes, headers={"x-a": ["1"]}) == "valued"
    assert both_orders(routes, headers={"x-a": ["2"]}) == "present"


def test_headers_beat_no_headers():
    routes = [
        mk("plain", hosts=["example.com"], ts="2020-01-01T00:00:00Z"),
        mk("header", hosts=["example.com"], headers={"x-a": None}, ts="2024-01-01T00:00:00Z"),
    ]
    assert both_orders(routes, headers={"x-a": ["1"]}) == "header"
    assert both_orders(routes) == "plain"


def test_older_creation_timestamp_first():
    routes = [
        mk("new", hosts=["example.com"], ts="2024-06-01T00:00:00Z"),
        mk("old", hosts=["example.com"], ts="2024-01-01T00:00:00Z"),
    ]
    assert both_orders(routes) == "old"


def test_missing_timestamp_sorts_first():
    routes = [
        mk("a-dated", hosts=["example.com"], ts="2024-01-01T00:00:00Z"),
        mk("b-undated", hosts=["example.com"], ts=""),
    ]
    assert both_orders(routes) == "b-undated"


def test_namespace_descending_then_name_descending():
    ts = "2024-01-01T00:00:00Z"
    by_ns = [mk("z", ns="alpha", hosts=["example.com"], ts=ts),
             mk("a", ns="beta", hosts=["example.com"], ts=ts)]
    assert both_orders(by_ns) == "a"  # namespace "beta" > "alpha"
    by_name = [mk("alpha", hosts=["example.com"], ts=ts),
               mk("beta", hosts=["example.com"], ts=ts)]
    assert both_orders(by_name) == "beta"


def test_tie_breaks_apply_only_within_a_key():
    # An older route on a shorter prefix never beats a newer longer prefix.
    routes = [
        mk("old-root", hosts=["example.com"], headers={"x-a": None, "x-b": None},
           ts="2000-01-01T00:00:00Z"),
        mk("new-api", hosts=["example.com"], paths=["/api"], ts="2024-01-01T00:00:00Z"),
    ]
    assert both_orders(routes, path="/api", headers={"x-a": ["1"], "x-b": ["1"]}) == "new-api"


# -- fallthrough -----------------------------------------------------------


def test_falls_through_to_shorter_prefix_in_same_tier():
    # Go would return 404 here: it stops at foo.com's longest prefix /api.
    routes = [
        mk("a", hosts=["foo.com"], paths=["/api"], headers={"x": None}),
        mk("b", hosts=["foo.com"], paths=["/"]),
    ]
    assert both_orders(routes, host="foo.com", path="/api") == "b"
    assert both_orders(routes, host="foo.com", path="/api", headers={"x": ["1"]}) == "a"


def test_shorter_prefix_in_tier_beats_longer_prefix_in_later_tier():
    routes = [
        mk("exact-api", hosts=["a.example.com"], paths=["/api"], headers={"x": None}),
        mk("exact-root", hosts=["a.example.com"]),
        mk("wild-api", hosts=["*.example.com"], paths=["/api"]),
    ]
    assert both_orders(routes, host="a.example.com", path="/api") == "exact-root"


def test_falls_through_to_next_host_tier():
    routes = [
        mk("exact", hosts=["a.example.com"], headers={"x": "1"}),
        mk("narrow", hosts=["*.a.example.com"], paths=["/api"], headers={"x": "2"}),
        mk("broad", hosts=["*.example.com"], paths=["/api"]),
        mk("any", hosts=["*"]),
    ]
    assert both_orders(routes, host="a.example.com", path="/api") == "broad"
    assert both_orders(routes, host="a.example.com", path="/other") == "any"
    assert both_orders(routes, host="b.a.example.com", path="/api",
                       headers={"x": ["2"]}) == "narrow"
    assert both_orders(routes, host="b.a.example.com", path="/api") == "broad"


# -- route shapes ------------------------------------------------------------


def test_httpscaledobject_style_single_rule():
    # hosts + pathPrefixes + headers, all in one rule.
    so = mk("so", hosts=["app.example.com", "app.example.org"],
            paths=["/v1", "/v2"], headers={"x-tenant": "t1"})
    assert routed([so], host="app.example.org", path="/v2/x", headers={"x-tenant": ["t1"]}) == "so"
    assert routed([so], host="app.example.com", path="/v1", headers={"x-tenant": ["t1"]}) == "so"
    assert routed([so], host="app.example.com", path="/v3", headers={"x-tenant": ["t1"]}) is None
    assert routed([so], host="app.example.com", path="/v1", headers={"x-tenant": ["t2"]}) is None


def test_httpscaledobject_without_hosts_or_paths_is_catch_all():
    assert routed([mk("so")], host="anything.example", path="/deep/path") == "so"


def test_rules_of_a_route_are_ored_and_keep_their_own_headers():
    r = mk("r", rules=[
        rule(hosts=["a.com"], headers={"x": "1"}),
        rule(hosts=["b.com"], paths=["/b"]),
    ])
    assert routed([r], host="a.com", headers={"x": ["1"]}) == "r"
    assert routed([r], host="a.com") is None
    assert routed([r], host="b.com", path="/b/c") == "r"
    assert routed([r], host="b.com", path="/") is None


def test_route_without_rules_is_not_routed():
    # Go's table adds one key per rule, so a rule-less route adds none.
    routes = [mk("bare", rules=())]
    assert routed(routes, host="example.com", path="/") is None
    assert routed(routes + [mk("x", hosts=["x.com"])], host="x.com") == "x"


# -- rule_matches ----------------------------------------------------------


def test_rule_matches_empty_rule_matches_everything():
    assert rule_matches(rule(), facts("any.host", "/any/path"))


def test_rule_matches_hosts_ored_paths_ored_headers_anded():
    r = rule(hosts=["a.com", "*.b.com"], paths=["/x", "/y/z"],
             headers={"h1": None, "h2": "v"})
    ok = {"h1": ["1"], "h2": ["v"]}
    assert rule_matches(r, facts("a.com", "/x/1", ok))
    assert rule_matches(r, facts("q.b.com", "/y/z", ok))
    assert not rule_matches(r, facts("b.com", "/x", ok))
    assert not rule_matches(r, facts("a.com", "/y", ok))
    assert not rule_matches(r, facts("a.com", "/xx", ok))
    assert not rule_matches(r, facts("a.com", "/x", {"h1": ["1"]}))
    assert rule_matches(rule(hosts=["A.com:80"]), facts("a.com"))
    assert rule_matches(rule(hosts=["*"]), facts(""))
    assert rule_matches(rule(paths=["/api"]), facts(path="/%61pi/1"))


# -- property: the table equals a brute-force reference --------------------


def _tier(raw_host, host):
    """Reference: rank of a configured host for ``host`` (lower is better),
    or None if it does not match."""
    pattern = normalize_host(raw_host)
    if pattern in ("", "*"):
        return (2, 0)
    if pattern.startswith("*."):
        suffix = pattern[1:]
        if host.endswith(suffix) and len(host) > len(suffix):
            return (1, -len(suffix))
        return None
    return (0, 0) if pattern == host else None


def _prefix_len(raw_prefix, path):
    """Reference: length of the configured prefix if it covers ``path``."""
    prefix = raw_prefix.strip("/")
    if prefix == "" or path == prefix or path.startswith(prefix + "/"):
        return len(prefix)
    return None


def _headers_ok(r, f):
    for h in r.headers:
        values = f.header_values(h.name)
        if h.value is None and not values:
            return False
        if h.value is not None and h.value not in values:
            return False
    return True


def _compare(a, b):
    """Reference order of two matches ``(rank, rule, route)``; negative if
    ``a`` is better."""
    (rank_a, rule_a, ra), (rank_b, rule_b, rb) = a, b
    if rank_a != rank_b:
        return -1 if rank_a < rank_b else 1
    if len(rule_a.headers) != len(rule_b.headers):
        return len(rule_b.headers) - len(rule_a.headers)
    valued_a = sum(h.value is not None for h in rule_a.headers)
    valued_b = sum(h.value is not None for h in rule_b.headers)
    if valued_a != valued_b:
        return valued_b - valued_a
    if ra.creation_timestamp != rb.creation_timestamp:
        return -1 if ra.creation_timestamp < rb.creation_timestamp else 1
    if ra.namespace != rb.namespace:
        return -1 if ra.namespace > rb.namespace else 1
    if ra.name != rb.name:
        return -1 if ra.name > rb.name else 1
    return 0


def reference_route(routes, f):
    path = unquote(f.path).strip("/")
    matches = []
    for route in routes:
        for r in route.rules:
            if not _headers_ok(r, f):
                continue
            for raw_host in r.hosts or ("*",):
                tier = _tier(raw_host, f.host)
                if tier is None:
                    continue
                for raw_path in r.paths or ("/",):
                    length = _prefix_len(raw_path, path)
                    if length is not None:
                        matches.append(((tier, -length), r, route))
    if not matches:
        return None
    return min(matches, key=cmp_to_key(_compare))[2]


def reference_rule_matches(r, f):
    path = unquote(f.path).strip("/")
    return (
        (not r.hosts or any(_tier(h, f.host) is not None for h in r.hosts))
        and (not r.paths or any(_prefix_len(p, path) is not None for p in r.paths))
        and _headers_ok(r, f)
    )


CONFIGURED_HOSTS = [
    "example.com", "a.example.com", "b.example.com", "x.a.example.com",
    "*.example.com", "*.a.example.com", "*.com", "*", "", "EXAMPLE.com:8080",
    "localhost", "[fd00::1]:80", "fd00::1",
]
REQUEST_HOSTS = [
    "example.com", "a.example.com", "x.a.example.com", "y.x.a.example.com",
    "b.example.com", "example.org", "localhost:8080", "LOCALHOST",
    "[fd00::1]:8443", "fd00::1", "com", "", ".example.com",
]
CONFIGURED_PATHS = ["/", "", "/api", "/api/", "/api/v1", "/apix", "//api//v1/", "/a/b", "/café"]
REQUEST_PATHS = [
    "/", "", "/api", "/api/", "/api/v1", "/api/v1/users", "/apix/v1", "/a/b/c",
    "/%61pi/v1", "/api%2Fv1", "/caf%C3%A9/x", "/api//v1", "/a",
]
HEADER_NAMES = ["x-a", "X-B"]
TIMESTAMPS = ["", "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"]

header_matches = st.dictionaries(
    st.sampled_from(HEADER_NAMES), st.sampled_from([None, "1", "2", ""]), max_size=2
)
rules = st.builds(
    rule,
    hosts=st.lists(st.sampled_from(CONFIGURED_HOSTS), max_size=3),
    paths=st.lists(st.sampled_from(CONFIGURED_PATHS), max_size=3),
    headers=header_matches,
)
routes = st.lists(
    st.builds(
        mk,
        name=st.sampled_from(["r1", "r2", "r3"]),
        ns=st.sampled_from(["ns1", "ns2"]),
        ts=st.sampled_from(TIMESTAMPS),
        rules=st.lists(rules, max_size=3),
    ),
    max_size=8,
    unique_by=lambda r: (r.namespace, r.name),
)
requests = st.builds(
    facts,
    host=st.sampled_from(REQUEST_HOSTS),
    path=st.sampled_from(REQUEST_PATHS),
    headers=st.dictionaries(
        st.sampled_from(["x-a", "x-b", "x-c"]),
        st.lists(st.sampled_from(["1", "2", ""]), max_size=2),
        max_size=3,
    ),
)


@settings(max_examples=300, deadline=None)
@given(routes, st.lists(requests, min_size=1, max_size=5))
def test_table_agrees_with_reference(route_set, request_list):
    table = RoutingTable.build(route_set)
    for f in request_list:
        assert table.route(f) == reference_route(route_set, f)


@settings(max_examples=200, deadline=None)
@given(routes, requests)
def test_routes_whenever_some_rule_matches(route_set, f):
    """With fallthrough, a request some rule matches is never a 404, and the
    chosen route always has a rule that matches it."""
    found = RoutingTable.build(route_set).route(f)
    any_match = any(rule_matches(r, f) for route in route_set for r in route.rules)
    assert (found is not None) == any_match
    if found is not None:
        assert any(rule_matches(r, f) for r in found.rules)


@settings(max_examples=300, deadline=None)
@given(rules, requests)
def test_rule_matches_agrees_with_reference(r, f):
    assert rule_matches(r, f) == reference_rule_matches(r, f)
