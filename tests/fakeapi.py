"""
A fake Kubernetes API server over real HTTP, for the Kubernetes source.

The source under test runs the real ``kubernetes`` client (urllib3, real
sockets), so Kubernetes is faked only at the HTTP boundary.  This server
speaks enough of the API server's list/watch dialect for the five kinds the
interceptor reads, and it can misbehave on purpose: drop watches, compact
its history, answer slowly, fail, or go away entirely.

It runs on plain ``http.server`` threads rather than on the Twisted reactor
so that it keeps answering while a test is not spinning the reactor, and so
that its own JSON work never shows up as a stall of the reactor under test.

What it implements, as the real server does:

- ``GET`` list (``metadata.resourceVersion`` on the list; built-in kinds'
  items carry no ``kind``/``apiVersion``, custom resources' items do) and
  watch (``?watch=true`` or ``watch=1``), cluster-wide and namespaced;
- ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-joined)
  and ``fieldSelector`` (``metadata.name`` and ``metadata.namespace`` with
  ``=``, ``==``, ``!=``);
- one global, increasing resourceVersion; a watch from a resourceVersion
  replays later events from a bounded history, and one older than the
  history gets an ``ERROR`` event carrying a ``Status`` with code 410;
- a watch with no resourceVersion (or "0") starts with synthetic ``ADDED``
  events for what exists;
- objects moving into or out of a label selector show up as ``ADDED`` or
  ``DELETED`` on that watch;
- ``allowWatchBookmarks`` brings periodic ``BOOKMARK`` events;
- ``timeoutSeconds`` ends the stream cleanly;
- watch streams are chunked, one JSON event per line;
- ``GET`` one object, ``POST`` create, ``PUT`` replace, ``DELETE``.

Fault hooks (Python methods, and ``POST /fake/...`` for a server run as a
separate process by ``python -m tests.fakeapi``): L{FakeApiServer.drop_watches},
L{FakeApiServer.compact}, L{FakeApiServer.set_latency},
L{FakeApiServer.fail}, L{FakeApiServer.stop} and L{FakeApiServer.start}.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import attrs

# -- the kinds it knows ---------------------------------------------------------


@attrs.frozen
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        """Custom resources are served as unstructured objects."""
        return self.group.endswith("keda.sh")


RESOURCE_TYPES = (
    ResourceType("http.keda.sh", "v1beta1", "InterceptorRoute", "interceptorroutes"),
    ResourceType("http.keda.sh", "v1alpha1", "HTTPScaledObject", "httpscaledobjects"),
    ResourceType("", "v1", "Service", "services"),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ResourceType("", "v1", "ConfigMap", "configmaps"),
)
_BY_KIND = {r.kind: r for r in RESOURCE_TYPES}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCE_TYPES}


def resource_type(kind_or_plural: str) -> ResourceType:
    """Look up by kind ("Service") or plural ("services")."""
    if kind_or_plural in _BY_KIND:
        return _BY_KIND[kind_or_plural]
    for r in RESOURCE_TYPES:
        if r.plural == kind_or_plural:
            return r
    raise KeyError(kind_or_plural)


# -- selectors ----------------------------------------------------------------

Predicate = Callable[[dict], bool]


class BadSelector(ValueError):
    pass


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def parse_label_selector(text: str) -> Predicate:
    """Equality-based label selectors, as ``kubectl -l`` writes them."""
    tests: list[Predicate] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda o, k=k, v=v: _labels(o).get(k) != v)
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=", 1).split("=", 1))
            tests.append(lambda o, k=k, v=v: _labels(o).get(k) == v)
        elif term.startswith("!"):
            k = term[1:].strip()
            tests.append(lambda o, k=k: k not in _labels(o))
        elif " " in term or "(" in term:
            raise BadSelector(f"unsupported label selector term {term!r}")
        else:
            tests.append(lambda o, k=term: k in _labels(o))
    return lambda o: all(t(o) for t in tests)


_FIELDS = {
    "metadata.name": lambda o: (o.get("metadata") or {}).get("name", ""),
    "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace", ""),
}


def parse_field_selector(text: str) -> Predicate:
    tests: list[Predicate] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        negate = "!=" in term
        sep = "!=" if negate else ("==" if "==" in term else "=")
        if sep not in term:
            raise BadSelector(f"invalid field selector term {term!r}")
        field, value = (s.strip() for s in term.split(sep, 1))
        if field not in _FIELDS:
            raise BadSelector(f'field label not supported: "{field}"')
        get = _FIELDS[field]
        if negate:
            tests.append(lambda o, g=get, v=value: g(o) != v)
        else:
            tests.append(lambda o, g=get, v=value: g(o) == v)
    return lambda o: all(t(o) for t in tests)


# -- state ----------------------------------------------------------------------


@attrs.frozen
class Event:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    resource: ResourceType
    obj: dict
    prev: dict | None = None


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Abort(Exception):
    """The connection is to be cut without a proper ending."""


@attrs.define
class _Failure:
    status: int
    until: float | None
    remaining: int | None
    reset: bool
    only: str = ""


class FakeApiServer:
    """The fake API server; see the module docstring.

    @param history_size: how many events a watch can resume through.
    @param bookmark_interval: seconds between BOOKMARK events on watches
        that asked for them (the real server uses about a minute).
    @param default_watch_timeout: seconds a watch lasts without
        ``timeoutSeconds``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_size: int = 10_000,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
        start_rv: int = 1000,
    ) -> None:
        self.host = host
        self.port = port
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        lock = threading.RLock()
        #: everything waits and changes under this one lock
        self._cond = threading.Condition(lock)
        #: per resource type, what its watches wait on: a change wakes the
        #: watches of its own type only, as the real server's per-resource
        #: watch caches do, not every watch thread of the process
        self._kind_cond = {r.plural: threading.Condition(lock) for r in RESOURCE_TYPES}
        self._rv = start_rv
        #: a new watch must start at or after this resourceVersion
        self._floor = start_rv
        #: the newest event forgotten; a live watch behind it is expired
        self._dropped_upto = start_rv
        self._objects: dict[str, dict[tuple[str, str], dict]] = {
            r.plural: {} for r in RESOURCE_TYPES}
        self._history: list[Event] = []
        self._history_rvs: list[int] = []
        self._epoch = 0  # bumped by drop_watches() and stop()
        self._latency = 0.0
        self._failure: _Failure | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self.open_watches = 0
        #: (method, path?query) of every API request, for assertions.
        self.requests: list[tuple[str, str]] = []
        #: resourceVersion -> time.monotonic() when a watch first began to
        #: write its event (the newest 1,000): when a client could hear of it
        self.sent: dict[int, float] = {}

    # -- lifecycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> FakeApiServer:
        """Listen (again, on the same port after a L{stop})."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._serve_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fakeapi-{self.port}", daemon=True)
        self._serve_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Go away: close the listener and cut every open connection.

        Clients then get "connection refused" until L{start} is called.
        """
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            self._epoch += 1
            self._wake()
        with self._conns_lock:
            conns = dict(self._conns)
        for sock in conns:
            _cut(sock)
        deadline = time.monotonic() + timeout
        for thread in conns.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._serve_thread is not None:
            self._serve_thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- fault hooks --------------------------------------------------------

    def drop_watches(self) -> None:
        """Cut every open watch connection abruptly (no final chunk)."""
        with self._cond:
            self._epoch += 1
            self._wake()

    def compact(self, upto: int | None = None, *, drop_watches: bool = False) -> None:
        """Forget the event history up to resourceVersion C{upto}.

        A new watch from an older resourceVersion then gets 410, as does a
        live watch that had not yet been sent a forgotten event.  Without
        C{upto}, everything is forgotten and the resourceVersion moves on
        (as if something else in the cluster was written), so every
        resourceVersion a client holds is expired, bookmarked or not.
        C{drop_watches} also cuts every watch, in the same instant, so the
        clients must come back with what they hold.
        """
        with self._cond:
            if upto is None:
                self._rv += 1
                upto = self._rv
            keep = bisect.bisect_right(self._history_rvs, upto)
            if keep:
                self._dropped_upto = max(self._dropped_upto, self._history_rvs[keep - 1])
            del self._history[:keep]
            del self._history_rvs[:keep]
            self._floor = max(self._floor, upto)
            if drop_watches:
                self._epoch += 1
            self._wake()

    def set_latency(self, seconds: float) -> None:
        """Delay every API response (before its headers) by C{seconds}."""
        self._latency = max(0.0, float(seconds))

    def fail(self, status: int = 500, *, seconds: float | None = None,
             count: int | None = None, reset: bool = False,
             only: str = "") -> None:
        """Fail API requests for C{seconds} or C{count} requests (or until
        L{heal}), with C{status}, or by closing the connection unanswered
        when C{reset} is true.  C{only} limits it to request paths that
        contain that text (e.g. C{"configmaps"})."""
        until = None if seconds is None else time.monotonic() + seconds
        self._failure = _Failure(status, until, count, reset, only)

    def heal(self) -> None:
        """Stop failing requests (see L{fail})."""
        self._failure = None

    # -- objects --------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def create(self, obj: dict) -> dict:
        """Add an object; raises KeyError if it exists.  Returns it as stored."""
        return self._write(obj, must_exist=False)

    def update(self, obj: dict) -> dict:
        """Replace an object; raises KeyError if it does not exist."""
        return self._write(obj, must_exist=True)

    def apply(self, obj: dict) -> dict:
        """Create or replace."""
        return self._write(obj, must_exist=None)

    def apply_many(self, objs) -> int:
        """Create or replace many objects under one lock; returns the count."""
        with self._cond:
            n = 0
            kinds = set()
            for obj in objs:
                kinds.add(resource_type(self._write_locked(obj, None)["kind"]).plural)
                n += 1
            self._wake(kinds)
        return n

    def delete(self, kind: str, namespace: str, name: str) -> dict:
        """Delete an object; raises KeyError if it does not exist."""
        res = resource_type(kind)
        with self._cond:
            old = self._objects[res.plural].pop((namespace, name))
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(Event(self._rv, "DELETED", res, gone))
            self._wake((res.plural,))
            return gone

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        res = resource_type(kind)
        with self._cond:
            obj = self._objects[res.plural].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str) -> list[dict]:
        res = resource_type(kind)
        with self._cond:
            return [copy.deepcopy(o) for o in self._objects[res.plural].values()]

    def _write(self, obj: dict, must_exist: bool | None) -> dict:
        with self._cond:
            stored = self._write_locked(obj, must_exist)
            self._wake((resource_type(stored["kind"]).plural,))
            return copy.deepcopy(stored)

    def _wake(self, plurals=None) -> None:
        """Under the lock: wake the watches of C{plurals} (of every type
        when None), and anything else waiting."""
        self._cond.notify_all()
        for plural in self._kind_cond if plurals is None else plurals:
            self._kind_cond[plural].notify_all()

    def _write_locked(self, obj: dict, must_exist: bool | None) -> dict:
        res = resource_type(obj["kind"])
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", "default"), meta["name"])
        old = self._objects[res.plural].get(key)
        if must_exist is True and old is None:
            raise KeyError(key)
        if must_exist is False and old is not None:
            raise KeyError(key)
        new = copy.deepcopy(obj)
        new["apiVersion"] = res.api_version
        new["kind"] = res.kind
        m = new.setdefault("metadata", {})
        m["namespace"] = key[0]
        self._rv += 1
        m["resourceVersion"] = str(self._rv)
        if old is None:
            m.setdefault("uid", str(uuid.uuid4()))
            m.setdefault("creationTimestamp",
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            m.setdefault("generation", 1)
        else:
            m["uid"] = old["metadata"]["uid"]
            m["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            m["generation"] = old["metadata"].get("generation", 1) + 1
        self._objects[res.plural][key] = new
        self._record(Event(self._rv, "MODIFIED" if old else "ADDED", res, new, old))
        return new

    def _record(self, event: Event) -> None:
        self._history.append(event)
        self._history_rvs.append(event.rv)
        excess = len(self._history) - self.history_size
        if excess > 0:
            gone = self._history_rvs[excess - 1]
            self._floor = max(self._floor, gone)
            self._dropped_upto = max(self._dropped_upto, gone)
            del self._history[:excess]
            del self._history_rvs[:excess]

    # -- request handling (handler threads) -----------------------------------

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns[sock] = threading.current_thread()
            else:
                self._conns.pop(sock, None)

    def _pre_request(self, h: _Handler) -> None:
        """Latency and failure injection; raises _Abort to cut the connection."""
        epoch = self._epoch
        if self._latency:
            deadline = time.monotonic() + self._latency
            with self._cond:
                while self._epoch == epoch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._epoch != epoch:
                raise _Abort()
        f = self._failure
        if f is None or f.only not in h.path:
            return
        if f.until is not None and time.monotonic() >= f.until:
            self._failure = None
            return
        if f.remaining is not None:
            if f.remaining <= 0:
                self._failure = None
                return
            f.remaining -= 1
        if f.reset:
            raise _Abort()
        h.send_json(f.status, status(f.status, "InternalError", "injected failure"))
        raise _Done()

    def handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parts = [p for p in split.path.split("/") if p]
        if parts[:1] == ["fake"]:
            return self._control(h, method, parts[1:])
        self.requests.append((method, h.path))
        try:
            self._pre_request(h)
        except _Done:
            return
        route = _parse_path(parts)
        if route is None:
            return h.send_json(404, status(404, "NotFound", f"no route for {split.path}"))
        res, namespace, name = route
        try:
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "1"):
                    return self._watch(h, res, namespace, query)
                return self._list(h, res, namespace, query)
            if method == "GET":
                obj = self._objects[res.plural].get((namespace, name))
                if obj is None:
                    return h.send_json(404, _not_found(res, name))
                return h.send_json(200, obj)
            if method in ("POST", "PUT"):
                body = h.read_json()
                body.setdefault("kind", res.kind)
                body.setdefault("metadata", {}).setdefault("namespace", namespace or "default")
                if name is not None:
                    body["metadata"]["name"] = name
                try:
                    stored = self._write(body, must_exist=(method == "PUT"))
                except KeyError:
                    if method == "PUT":
                        return h.send_json(404, _not_found(res, body["metadata"]["name"]))
                    return h.send_json(409, status(409, "AlreadyExists", "already exists"))
                return h.send_json(201 if method == "POST" else 200, stored)
            if method == "DELETE" and name is not None:
                try:
                    return h.send_json(200, self.delete(res.kind, namespace or "", name))
                except KeyError:
                    return h.send_json(404, _not_found(res, name))
        except BadSelector as e:
            return h.send_json(400, status(400, "BadRequest", str(e)))
        h.send_json(405, status(405, "MethodNotAllowed", f"{method} not allowed"))

    def _selector(self, res: ResourceType, namespace: str | None, query) -> Predicate:
        label = parse_label_selector(query.get("labelSelector", ""))
        field = parse_field_selector(query.get("fieldSelector", ""))

        def match(obj: dict) -> bool:
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return label(obj) and field(obj)
        return match

    def _list(self, h: _Handler, res: ResourceType, namespace, query) -> None:
        match = self._selector(res, namespace, query)
        with self._cond:
            rv = self._rv
            items = [o for o in self._objects[res.plural].values() if match(o)]
            if not res.custom:
                items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                         for o in items]
            body = _dumps({
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            })
        h.send_bytes(200, body)

    def _watch(self, h: _Handler, res: ResourceType, namespace, query) -> None:
        match = self._selector(res, namespace, query)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        since = query.get("resourceVersion", "")
        start = time.monotonic()
        deadline = start + timeout
        with self._cond:
            epoch = self._epoch
            if since in ("", "0"):
                cursor = self._rv
                initial = [copy.deepcopy(o) for o in self._objects[res.plural].values()
                           if match(o)]
            else:
                cursor = int(since)
                initial = []
                if cursor < self._floor:
                    initial = None
        h.start_chunked()
        if initial is None:
            h.write_chunk(_expired(cursor, self._floor))
            return h.end_chunked()
        with self._cond:
            self.open_watches += 1
        try:
            for obj in initial:
                h.write_chunk(_dumps({"type": "ADDED", "object": obj}))
            next_bookmark = start + self.bookmark_interval
            while True:
                with self._cond:
                    while True:
                        if self._epoch != epoch:
                            raise _Abort()
                        if cursor < self._dropped_upto:
                            expired = _expired(cursor, self._dropped_upto)
                            break
                        expired = None
                        i = bisect.bisect_right(self._history_rvs, cursor)
                        events = self._history[i:]
                        now = time.monotonic()
                        if events or now >= deadline or (bookmarks and now >= next_bookmark):
                            break
                        wake = min(deadline, next_bookmark) if bookmarks else deadline
                        self._kind_cond[res.plural].wait(wake - now)
                    if expired is None:
                        cursor = self._rv
                if expired is not None:
                    h.write_chunk(expired)
                    return h.end_chunked()
                for ev in events:
                    if ev.resource is not res:
                        continue
                    out = _translate(ev, match)
                    if out is not None:
                        # marked first: a client that has read the event may
                        # ask for the time at once
                        self._mark_sent(ev.rv)
                        h.write_chunk(_dumps({"type": out, "object": ev.obj}))
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    h.write_chunk(_dumps({"type": "BOOKMARK", "object": {
                        "kind": res.kind, "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(cursor)}}}))
                    next_bookmark = now + self.bookmark_interval
                if now >= deadline:
                    return h.end_chunked()
        finally:
            with self._cond:
                self.open_watches -= 1

    def _mark_sent(self, rv: int) -> None:
        with self._cond:
            if rv not in self.sent:
                if len(self.sent) >= 1000:
                    del self.sent[next(iter(self.sent))]
                self.sent[rv] = time.monotonic()

    # -- control API for a server in another process -------------------------

    def _control(self, h: _Handler, method: str, parts: list[str]) -> None:
        """``POST /fake/{objects,drop,compact,latency,fail,heal,sent}``."""
        if method != "POST" or len(parts) != 1:
            return h.send_json(404, status(404, "NotFound", "unknown control"))
        body = h.read_json() if int(h.headers.get("Content-Length") or 0) else {}
        op = parts[0]
        if op == "objects":
            n = self.apply_many(body)
            return h.send_json(200, {"applied": n, "resourceVersion": str(self._rv)})
        if op == "drop":
            self.drop_watches()
        elif op == "compact":
            self.compact(body.get("upto"), drop_watches=body.get("drop_watches", False))
        elif op == "latency":
            self.set_latency(body.get("seconds", 0))
        elif op == "fail":
            self.fail(body.get("status", 500), seconds=body.get("seconds"),
                      count=body.get("count"), reset=body.get("reset", False),
                      only=body.get("only", ""))
        elif op == "heal":
            self.heal()
        elif op == "sent":
            with self._cond:
                at = self.sent.get(int(body.get("resourceVersion", 0)))
            return h.send_json(200, {"sent": at})
        else:
            return h.send_json(404, status(404, "NotFound", f"unknown control {op}"))
        h.send_json(200, {"ok": True})


class _Done(Exception):
    """The request has been answered already."""


def _translate(ev: Event, match: Predicate) -> str | None:
    """The event type a watch with selector C{match} sees, or None."""
    new = match(ev.obj)
    if ev.type == "MODIFIED":
        old = ev.prev is not None and match(ev.prev)
        if new and old:
            return "MODIFIED"
        if new:
            return "ADDED"
        if old:
            return "DELETED"
        return None
    return ev.type if new else None


def _expired(rv: int, floor: int) -> bytes:
    return _dumps({"type": "ERROR", "object": status(
        410, "Expired", f"too old resource version: {rv} ({floor})")})


def _not_found(res: ResourceType, name: str) -> dict:
    group = f".{res.group}" if res.group else ""
    return status(404, "NotFound", f'{res.plural}{group} "{name}" not found')


def _parse_path(parts: list[str]):
    """``/api/v1/...`` or ``/apis/g/v/...`` -> (resource, namespace, name)."""
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if len(rest) not in (1, 2):
        return None
    res = _BY_PATH.get((group, version, rest[0]))
    if res is None:
        return None
    return res, namespace, (rest[1] if len(rest) == 2 else None)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # As Go's net/http does: a response's headers and body (or two watch
        # events) are separate writes, and Nagle plus the client's delayed
        # ACK would hold the second one back for up to 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib name
        pass

    def _dispatch(self, method: str) -> None:
        try:
            self.server.fake.handle(self, method)
        except (_Abort, OSError):
            self.close_connection = True
            _cut(self.connection)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- writing ----------------------------------------------------------------

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def send_json(self, code: int, obj) -> None:
        self.send_bytes(code, _dumps(obj))

    def send_bytes(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        data += b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# -- object builders (raw API dicts, as a user would apply them) -------------


def interceptor_route(name: str, namespace: str = "default", *, service: str = "web",
                      port: int = 80, hosts=("example.com",), paths=(), **spec) -> dict:
    rule: dict = {"hosts": list(hosts)}
    if paths:
        rule["paths"] = [{"value": p} for p in paths]
    return {
        "apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"target": {"service": service, "port": port}, "rules": [rule], **spec},
    }


def http_scaled_object(name: str, namespace: str = "default", *, service: str = "web",
                       port: int = 80, hosts=("example.com",)) -> dict:
    return {
        "apiVersion": "http.keda.sh/v1alpha1", "kind": "HTTPScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": list(hosts),
                 "scaleTargetRef": {"service": service, "port": port}},
    }


def service(name: str, namespace: str = "default", *, ports=(("http", 80),),
            cluster_ip: str = "10.96.0.10") -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": cluster_ip,
                 "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports]},
    }


def endpoint_slice(name: str, namespace: str = "default", *, service: str = "web",
                   ips=("10.0.0.1",), port: int = 8080, port_name: str = "http",
                   ready: bool | None = True) -> dict:
    conditions = {} if ready is None else {"ready": ready}
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": dict(conditions)} for ip in ips],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def config_map(name: str, namespace: str = "default", *, data=None,
               labelled: bool = True) -> dict:
    labels = {"http.keda.sh/response-body": "true"} if labelled else {}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": dict(data or {"body.html": "<p>wait</p>"}),
    }


def main(argv=None) -> None:
    """Run the server in its own process; prints ``PORT <n>`` when ready."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bookmark-interval", type=float, default=1.0)
    p.add_argument("--history-size", type=int, default=10_000)
    args = p.parse_args(argv)
    fake = FakeApiServer(port=args.port, bookmark_interval=args.bookmark_interval,
                         history_size=args.history_size).start()
    print(f"PORT {fake.port}", flush=True)
    try:
        sys.stdin.read()  # run until the parent closes our stdin
    except KeyboardInterrupt:
        pass
    fake.stop()


if __name__ == "__main__":
    main()
