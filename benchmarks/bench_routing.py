"""
Routing-table lookup cost against table size.

Run: ``.venv/bin/python benchmarks/bench_routing.py``

Builds tables of 10 to 10,000 routes with the same mix of shapes (exact
hosts, hosts with path prefixes, wildcard hosts, header-matched routes) and
times three lookups that exist in every table size: a hit on an exact host
with a deep path, a hit on a wildcard host, and a miss.  The lookup must
not grow with the number of routes, so the script exits 1 when a lookup on
10,000 routes costs more than twice the same lookup on 10 routes.
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keda_proxy.state._model import (
    HeaderMatch,
    RequestFacts,
    Route,
    RoutingRule,
    ServiceRef,
)
from keda_proxy.state._routing import RoutingTable, normalize_host

SIZES = (10, 100, 1_000, 10_000)
MAX_RATIO = 2.0
NUMBER = 20_000
REPEAT = 15


def make_route(i: int) -> Route:
    """Route ``i``; ``i % 10`` picks its shape, so every table of 10 or more
    routes holds every shape."""
    shape = i % 10
    host = f"svc{i}.ns{i % 97}.example.com"
    if shape == 6:
        rules = (
            RoutingRule(hosts=(host,), paths=("/api", "/api/v1")),
            RoutingRule(hosts=(host,), paths=("/api/v1",),
                        headers=(HeaderMatch("x-canary", "true"),)),
        )
    elif shape == 7:
        rules = (RoutingRule(hosts=(f"*.team{i}.example.io",)),)
    elif shape == 8:
        rules = (RoutingRule(hosts=(host,), headers=(HeaderMatch("x-tenant", None),)),)
    elif shape == 9:
        rules = (RoutingRule(hosts=(f"*.apps{i}.example.io", f"www.site{i}.example.net"),
                             paths=("/static",)),)
    else:
        rules = (RoutingRule(hosts=(host, f"svc{i}.example.org:8080")),)
    return Route(
        namespace=f"ns{i % 97}",
        name=f"route-{i}",
        target=ServiceRef(name=f"svc{i}", port=8080),
        rules=rules,
        creation_timestamp=f"2024-01-{1 + i % 28:02d}T00:00:00Z",
    )


def facts(host: str, path: str, headers=None) -> RequestFacts:
    return RequestFacts.from_mapping(normalize_host(host), path, headers or {})


LOOKUPS = {
    # route-6: exact host, two path prefixes, a header variant not sent.
    "exact hit": (facts("svc6.ns6.example.com:443", "/api/v1/users/42"),
                  "route-6"),
    # route-7: wildcard host, two labels below the suffix.
    "wildcard hit": (facts("a.b.team7.example.io", "/index.html"), "route-7"),
    # nothing: unknown host, several labels and segments to try.
    "miss": (facts("x.y.unknown.example.org", "/a/b/c/d"), None),
}


def time_lookup(table: RoutingTable, request: RequestFacts) -> float:
    """CPU seconds for NUMBER lookups of ``request`` in ``table``.

    CPU time rather than wall time: on a shared machine the wall clock also
    counts the time other processes held the core.
    """
    timer = timeit.Timer("route(request)", timer=time.process_time,
                         globals={"route": table.route, "request": request})
    return timer.timeit(number=NUMBER)


def main() -> int:
    routes = [make_route(i) for i in range(max(SIZES))]
    tables = {size: RoutingTable.build(routes[:size]) for size in SIZES}
    for size, table in tables.items():
        for label, (request, expected) in LOOKUPS.items():
            found = table.route(request)
            got = None if found is None else found.name
            if got != expected:
                print(f"{size} routes, {label}: routed to {got}, expected {expected}")
                return 2

    # Interleave sizes within each repeat so that a burst of load on the
    # machine hits every size alike instead of skewing the ratio.
    runs: dict[tuple[int, str], list[float]] = {}
    for _ in range(REPEAT):
        for size, table in tables.items():
            for label, (request, _expected) in LOOKUPS.items():
                runs.setdefault((size, label), []).append(time_lookup(table, request))
    results = {
        size: {label: statistics.median(runs[size, label]) / NUMBER * 1e9 for label in LOOKUPS}
        for size in SIZES
    }

    builds = []
    for _ in range(3):
        start = time.perf_counter()
        RoutingTable.build(routes)
        builds.append(time.perf_counter() - start)

    labels = list(LOOKUPS)
    print(f"Python {sys.version.split()[0]}; CPU time, median of {REPEAT} x {NUMBER:,} lookups")
    print(f"{'routes':>8} " + " ".join(f"{label + ' ns':>16}" for label in labels))
    for size in SIZES:
        print(f"{size:>8,} " + " ".join(f"{results[size][label]:>16.0f}" for label in labels))
    ratios = {label: results[max(SIZES)][label] / results[min(SIZES)][label]
              for label in labels}
    print(f"{'ratio':>8} " + " ".join(f"{ratios[label]:>16.2f}" for label in labels)
          + f"   ({max(SIZES):,} / {min(SIZES)} routes; limit {MAX_RATIO})")
    print(f"build of {max(SIZES):,} routes: {statistics.median(builds) * 1e3:.1f} ms (median of 3)")

    worst = max(ratios.values())
    if worst > MAX_RATIO:
        print(f"FAIL: lookup cost grew {worst:.2f}x with table size")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
