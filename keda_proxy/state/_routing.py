"""
The routing table: which route serves a request.

A L{RoutingTable} is an immutable value built once per snapshot and then
shared by every request without locking.  All the work that does not
depend on the request (normalising hosts and paths, ordering the
candidates of each key) happens in L{RoutingTable.build}, so that
L{RoutingTable.route} only does a handful of dict lookups whose number
depends on the request (its labels and path segments), never on the number
of routes.

The rules, which follow the Go interceptor (``pkg/routing``):

  - Each rule of a route contributes the keys ``hosts x paths``.  A rule
    without hosts is a catch-all host; a rule without paths covers the
    whole host (path ``/``).  A route without any rule contributes no key
    and so is never chosen by the table (Go does the same; it is still
    counted, and a routing plugin may still pick it).
  - Host tiers, tried in order: the exact hostname; then the wildcards
    ``*.suffix`` from the longest suffix to the shortest (a wildcard covers
    one or more labels, never the bare suffix: ``*.example.com`` matches
    ``a.b.example.com`` but not ``example.com``); then the catch-all
    (``*``, ``""`` or no hosts).  Hosts compare case-insensitively and the
    port of a configured host is ignored.  A configured host with Unicode
    labels is compared in its punycode (A-label) form, which is what
    clients send (L{host_to_ascii}); the request's host is not converted.
  - Paths are prefixes on segment boundaries, compared after trimming
    leading and trailing slashes and after percent-decoding the request
    path (Go matches the decoded ``URL.Path``): ``/api`` matches ``/api``,
    ``/api/`` and ``/api/x`` but not ``/apix``.  Longer prefixes first.
    Dot segments are not removed (nor is Go's ``URL.Path`` cleaned):
    ``/public/../admin`` is under ``/public``, not ``/admin``.
  - Within one (host, path) key the candidates are ordered: more headers
    first, then more headers with a value, then the older
    creationTimestamp, then namespace and then name in *descending* order
    (Go compares ``b`` to ``a`` there).  The first candidate whose headers
    all match wins.
  - Fallthrough: for each host tier, every matching path prefix is tried
    from the longest to the shortest before moving to the next tier.  Go
    stops looking in a tier after the longest prefix's candidates fail
    their header match; we keep looking at shorter prefixes of the same
    tier, so a request that some rule matches is never refused with a 404.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote

from zope.interface import implementer

try:
    import idna as _idna
except ImportError:  # pragma: no cover - idna comes with twisted[tls]
    _idna = None

from keda_proxy.interfaces import IRouter
from keda_proxy.state._model import RequestFacts, Route, RoutingRule

__all__ = ["RoutingTable", "host_to_ascii", "normalize_host", "normalize_path",
           "rule_matches"]

#: A compiled header condition: ``(lower-case name, value or None)``.
_Header = tuple[str, str | None]
#: One candidate of a key: its rule's headers and the route it leads to.
_Candidate = tuple[tuple[_Header, ...], Route]
#: One host pattern's paths: the distinct configured path lengths, longest
#: first, and the key-form path -> candidates (best first) mapping.
_HostEntry = tuple[tuple[int, ...], dict[str, tuple[_Candidate, ...]]]

# Host pattern kinds, as returned by _host_pattern.
_EXACT = 0
_WILDCARD = 1
_ANY = 2
_NOTHING = 3


def _strip_port(host: str) -> str:
    """Drop a ``:port`` and IPv6 brackets.

    A bare IPv6 literal (two or more colons, no brackets) has no port to
    drop: ``fd00::1`` is kept whole rather than cut at its last colon.
    """
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end != -1 else host
    if host.count(":") == 1:
        return host[: host.index(":")]
    return host


def normalize_host(raw: str) -> str:
    """The hostname of a Host header value, in the form routing compares.

    Lower-cased (DNS names are case-insensitive), without port or IPv6
    brackets, and without one trailing dot (``example.com.`` is the same
    fully-qualified name as ``example.com``)::

        "Example.COM:8080" -> "example.com"
        "[fd00::1]:8080"   -> "fd00::1"
        "[::1]"            -> "::1"
        "fd00::1"          -> "fd00::1"
    """
    host = raw.strip().lower()
    if ":" in host or host.startswith("["):
        host = _strip_port(host)
    if len(host) > 1 and host.endswith("."):
        host = host[:-1]
    return host


#: The label separators of IDNA 2003, for Python's own "idna" codec.
_IDNA_DOTS = re.compile("[.\u3002\uff0e\uff61]")


def host_to_ascii(raw: str) -> str:
    """A configured host with its Unicode labels in punycode (A-label) form.

    Clients put the A-label form of an internationalised name in ``Host``,
    so that is the form a configured host must have to match.  An ASCII
    host is returned unchanged.  Otherwise the host is mapped with UTS #46
    (which lower-cases it and maps full-width dots and letters) and each
    non-ASCII label becomes ``xn--...``; ASCII labels, a leading ``*.``
    wildcard, a trailing dot and a ``:port`` are kept::

        "bücher.example"     -> "xn--bcher-kva.example"
        "*.Bücher.example"   -> "*.xn--bcher-kva.example"
        "shop.example"       -> "shop.example"

    Uses the C{idna} package (IDNA 2008 with UTS #46) when it is installed,
    else Python's built-in IDNA 2003 codec.

    @raise ValueError: a label is not a valid internationalised label
        (the message says why), or the name is too long.
    """
    if raw.isascii():
        return raw
    host = raw.strip()
    prefix = port = ""
    if host.startswith("*."):
        prefix, host = "*.", host[2:]
    if host.count(":") == 1:
        host, _, port = host.partition(":")
        port = ":" + port
    try:
        if _idna is not None:
            labels = _idna.uts46_remap(host, std3_rules=False, transitional=False).split(".")
            out = [label if label.isascii() else _idna.alabel(label).decode("ascii")
                   for label in labels]
        else:
            out = [label if label.isascii() else label.encode("idna").decode("ascii")
                   for label in _IDNA_DOTS.split(host.lower())]
    except UnicodeError as e:
        raise ValueError(str(e) or type(e).__name__) from None
    name = ".".join(out)
    if len(name.removesuffix(".")) > 253:
        raise ValueError("name longer than 253 characters")
    return prefix + name + port


def normalize_path(path: str) -> str:
    """A configured path prefix in key form: leading/trailing slashes trimmed.

    ``"/"``, ``""`` and ``"//"`` all become ``""``, the prefix of every path.
    Configured paths are not percent-decoded (Go compares them as written).
    """
    return path.strip("/")


def _request_path(raw: str) -> str:
    """The request path in key form: percent-decoded, then slash-trimmed.

    The proxy decodes the request target as latin-1 (byte for byte); raw
    UTF-8 bytes in it are turned back into text so that they compare like
    their percent-encoded form, as Go compares bytes.  A path that is not
    latin-1-decoded UTF-8 is left alone.
    """
    if not raw.isascii():
        try:
            raw = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    if "%" in raw:
        raw = unquote(raw)
    return raw.strip("/")


@lru_cache(maxsize=4096)
def _host_pattern(raw: str) -> tuple[int, str]:
    """Classify a configured host as exact, wildcard (with its ``.suffix``),
    catch-all, or nothing (a wildcard with an empty suffix, such as ``*.``,
    which no normalised request host can match).

    A host with Unicode labels is classified by its punycode form; one that
    has none (invalid IDNA) is nothing.  The resource parser rejects such
    hosts with a message; this covers routes built some other way.
    """
    if not raw.isascii():
        try:
            raw = host_to_ascii(raw)
        except ValueError:
            return _NOTHING, ""
    host = _strip_port(raw.strip().lower())
    if host in ("", "*"):
        return _ANY, ""
    if host.startswith("*."):
        suffix = host[1:]
        suffix = suffix.removesuffix(".")
        return (_WILDCARD, suffix) if suffix else (_NOTHING, "")
    return _EXACT, normalize_host(host)


def _path_matches(prefix: str, path: str) -> bool:
    """Whether key-form ``prefix`` covers key-form ``path`` on a segment
    boundary."""
    return (
        not prefix
        or path == prefix
        or (path.startswith(prefix) and path[len(prefix)] == "/")
    )


def _headers_match(headers: tuple[_Header, ...], header_values) -> bool:
    """All conditions hold: a ``None`` value means present, otherwise the
    value must equal one of the request's values for that header exactly."""
    for name, value in headers:
        values = header_values(name)
        if value is None:
            if not values:
                return False
        elif value not in values:
            return False
    return True


def _compile_headers(rule: RoutingRule) -> tuple[_Header, ...]:
    return tuple((h.name, h.value) for h in rule.headers)


def rule_matches(rule: RoutingRule, facts: RequestFacts) -> bool:
    """Whether one rule matches a request, by itself.

    Hosts are OR'ed, paths are OR'ed, headers are AND'ed, and an empty list
    matches everything.  Host and path comparisons are the table's own
    (wildcards, catch-all, segment-boundary prefixes).  This is what static
    routes use: they are evaluated in list order, first match wins, so no
    precedence between rules is needed here.
    """
    if rule.hosts:
        host = facts.host
        for raw in rule.hosts:
            kind, pattern = _host_pattern(raw)
            if kind == _ANY:
                break
            if kind == _EXACT and host == pattern:
                break
            if (
                kind == _WILDCARD
                and host.endswith(pattern)
                and len(host) > len(pattern)
            ):
                break
        else:
            return False
    if rule.paths:
        path = _request_path(facts.path)
        if not any(_path_matches(normalize_path(p), path) for p in rule.paths):
            return False
    return _headers_match(_compile_headers(rule), facts.header_values)


def _tiebreak_order(entries: list[_Candidate]) -> tuple[_Candidate, ...]:
    """Order one key's candidates, best first.

    Two stable sorts: the descending namespace/name tiebreak first, then
    the ascending primary key (more headers, more valued headers, older).
    """
    entries = sorted(entries, key=lambda e: (e[1].namespace, e[1].name), reverse=True)
    entries.sort(
        key=lambda e: (
            -len(e[0]),
            -sum(1 for _, v in e[0] if v is not None),
            e[1].creation_timestamp,
        )
    )
    return tuple(entries)


def _compile_paths(by_path: dict[str, list[_Candidate]]) -> _HostEntry:
    """Freeze one host's paths, with their distinct lengths longest first.

    The lengths let a lookup slice the request path only where a configured
    prefix could end, instead of at every segment boundary.
    """
    compiled = {path: _tiebreak_order(entries) for path, entries in by_path.items()}
    lengths = tuple(sorted({len(path) for path in compiled}, reverse=True))
    return lengths, compiled


@implementer(IRouter)
class RoutingTable:
    """An immutable host -> path -> candidates index of routes.

    Build one with L{RoutingTable.build}; a new set of routes means a new
    table, swapped in by the snapshot owner.
    """

    __slots__ = ("_any", "_count", "_exact", "_wildcard", "_wildcard_lengths")

    def __init__(
        self,
        exact: dict[str, _HostEntry],
        wildcard: dict[str, _HostEntry],
        any_host: _HostEntry | None,
        count: int,
    ):
        self._exact = exact
        #: keyed by the suffix with its leading dot: ".example.com".
        self._wildcard = wildcard
        #: suffix lengths present, to skip slicing impossible suffixes.
        self._wildcard_lengths = frozenset(len(s) for s in wildcard)
        self._any = any_host
        self._count = count

    @classmethod
    def build(cls, routes: Iterable[Route]) -> RoutingTable:
        """Index ``routes``; all ordering is decided here, not per request."""
        staging: dict[tuple[int, str], dict[str, list[_Candidate]]] = {}
        count = 0
        for route in routes:
            count += 1
            for rule in route.rules:
                headers = _compile_headers(rule)
                paths = {normalize_path(p) for p in rule.paths} or {""}
                for raw_host in rule.hosts or ("*",):
                    kind, pattern = _host_pattern(raw_host)
                    if kind == _NOTHING:
                        continue
                    by_path = staging.setdefault((kind, pattern), {})
                    for path in paths:
                        by_path.setdefault(path, []).append((headers, route))
        exact: dict[str, _HostEntry] = {}
        wildcard: dict[str, _HostEntry] = {}
        any_host: _HostEntry | None = None
        for (kind, pattern), by_path in staging.items():
            entry = _compile_paths(by_path)
            if kind == _EXACT:
                exact[pattern] = entry
            elif kind == _WILDCARD:
                wildcard[pattern] = entry
            else:
                any_host = entry
        return cls(exact, wildcard, any_host, count)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<RoutingTable of {self._count} routes>"

    def route(self, facts: RequestFacts) -> Route | None:
        """The route for ``facts``, or L{None} (the proxy answers 404).

        ``facts.host`` must already be normalised (L{normalize_host}).  The
        work is a dict lookup per host tier the request's host has (itself,
        each wildcard suffix that some route uses, the catch-all) times the
        configured path lengths of that tier: nothing here loops over
        routes.
        """
        host = facts.host
        path = _request_path(facts.path)
        header_values = facts.header_values

        entry = self._exact.get(host)
        if entry is not None:
            found = _search(entry, path, header_values)
            if found is not None:
                return found

        if self._wildcard:
            lengths = self._wildcard_lengths
            size = len(host)
            dot = host.find(".", 1)
            while dot != -1:
                if size - dot in lengths:
                    entry = self._wildcard.get(host[dot:])
                    if entry is not None:
                        found = _search(entry, path, header_values)
                        if found is not None:
                            return found
                dot = host.find(".", dot + 1)

        if self._any is not None:
            return _search(self._any, path, header_values)
        return None


def _search(entry: _HostEntry, path: str, header_values) -> Route | None:
    """The best candidate of one host tier for key-form ``path``.

    Configured prefixes are tried longest first; a length only costs a
    slice and a lookup when the request path has a segment boundary there.
    """
    lengths, by_path = entry
    size = len(path)
    for length in lengths:
        if length == size:
            key = path
        elif length == 0:
            key = ""
        elif length < size and path[length] == "/":
            key = path[:length]
        else:
            continue
        candidates = by_path.get(key)
        if candidates is None:
            continue
        for headers, route in candidates:
            if not headers or _headers_match(headers, header_values):
                return route
    return None
