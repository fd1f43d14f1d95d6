"""
One watched kind: a daemon thread that lists, then watches, forever.

The thread does all the blocking and all the parsing; the reactor only
receives finished model values (through a C{deliver} callable that the
owning L{keda_proxy.state._kube_source.KubernetesSource} routes through
C{callFromThread}).  That keeps a 5,000-object re-list from ever stalling
the proxy, and it keeps the reactor thread pool free for DNS.

The loop, per kind::

    list (no resourceVersion: a consistent read)   -> deliver replace(all)
                                                       the first time, then
                                                       only the differences
    watch from the list's resourceVersion, with bookmarks, a server-side
    timeoutSeconds and a client read timeout        -> deliver put / remove
      stream ends or breaks                         -> watch again from the
                                                       last resourceVersion
      ERROR 410 / HTTP 410 (history compacted)      -> list again
      any other failure                             -> jittered, capped
                                                       exponential backoff,
                                                       then list again

We send the list requests (with C{watch=True} for a watch) through the
client's ApiClient, take the response unread (L{_get}) and read the lines
ourselves rather than use C{kubernetes.watch.Watch}: its retry-once-on-410
and version-dependent bookmark handling hide exactly the events we must act
on, and we need the response object so that C{stop()} can shut its socket
from another thread.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import urllib3
from attrs import define, frozen
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from keda_proxy.state._kube_client import SocketTracker, interruptible_client
from keda_proxy.state._kube_json import ITEM, iter_list
from keda_proxy.state._model import (
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    object_key,
)
from keda_proxy.state._resources import RESPONSE_BODY_LABEL, InvalidResource, parse_object

# -- what we watch ---------------------------------------------------------------

ListCall = Callable[..., object]


@frozen
class WatchedKind:
    """How to list and watch one kind with the generated client.

    @ivar list_call: C{(api_client, namespace, **kwargs) -> response};
        C{namespace} "" means all namespaces.
    @ivar label_selector: applied by the server, to both list and watch.
    """

    kind: str
    api_version: str
    list_call: ListCall
    label_selector: str | None = None


#: The query parameters we send, by the generated list methods' names.
_QUERY = {"watch": "watch", "allow_watch_bookmarks": "allowWatchBookmarks",
          "timeout_seconds": "timeoutSeconds", "resource_version": "resourceVersion",
          "label_selector": "labelSelector"}


def _get(api, path: str, *, _preload_content: bool = False, _request_timeout=None, **kw):
    """GET C{path} as the generated list methods do (the client's host,
    credentials, TLS, proxy and headers; C{ApiException} for a status other
    than 2xx), returning the urllib3 response unread, without the generated
    API classes: each imports the models of all its operations (CoreV1Api:
    237 modules, about 20 MiB of RSS) and validates every call's arguments
    with pydantic, and we use neither (see docs/performance.md, Memory)."""
    request = api.param_serialize(
        method="GET", resource_path=path,
        query_params=[(_QUERY[k], v) for k, v in kw.items() if v is not None],
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api.call_api(*request, _request_timeout=_request_timeout)
    if not 200 <= resp.status <= 299:
        resp.read()
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    return resp.response


def _listing(prefix: str, plural: str, generated: ListCall) -> ListCall:
    """List or watch C{prefix}[/namespaces/NS]/C{plural} with L{_get}; with a
    client older than v37 (no C{param_serialize}), with C{generated}."""
    def call(api, namespace, **kw):
        if not hasattr(api, "param_serialize"):
            return generated(api, namespace, **kw)
        ns = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
        return _get(api, f"{prefix}{ns}/{plural}", **kw)
    return call


def _custom(group: str, version: str, plural: str) -> ListCall:
    def call(api, namespace, **kw):
        custom = k8s_client.CustomObjectsApi(api)
        if namespace:
            return custom.list_namespaced_custom_object(group, version, namespace, plural, **kw)
        return custom.list_cluster_custom_object(group, version, plural, **kw)
    return _listing(f"/apis/{group}/{version}", plural, call)


def _typed(prefix: str, plural: str, api_class: str, all_namespaces: str,
           namespaced: str) -> ListCall:
    def call(api, namespace, **kw):
        typed = getattr(k8s_client, api_class)(api)
        if namespace:
            return getattr(typed, namespaced)(namespace, **kw)
        return getattr(typed, all_namespaces)(**kw)
    return _listing(prefix, plural, call)


WATCHED_KINDS: tuple[WatchedKind, ...] = (
    WatchedKind(KIND_INTERCEPTOR_ROUTE, "http.keda.sh/v1beta1",
                _custom("http.keda.sh", "v1beta1", "interceptorroutes")),
    WatchedKind(KIND_HTTP_SCALED_OBJECT, "http.keda.sh/v1alpha1",
                _custom("http.keda.sh", "v1alpha1", "httpscaledobjects")),
    WatchedKind(KIND_SERVICE, "v1",
                _typed("/api/v1", "services", "CoreV1Api", "list_service_for_all_namespaces",
                       "list_namespaced_service")),
    WatchedKind(KIND_ENDPOINT_SLICE, "discovery.k8s.io/v1",
                _typed("/apis/discovery.k8s.io/v1", "endpointslices", "DiscoveryV1Api",
                       "list_endpoint_slice_for_all_namespaces",
                       "list_namespaced_endpoint_slice")),
    # Only labelled ConfigMaps, selected by the server: a cluster's
    # ConfigMaps can be large and numerous, and we need a handful.
    WatchedKind(KIND_CONFIG_MAP, "v1",
                _typed("/api/v1", "configmaps", "CoreV1Api",
                       "list_config_map_for_all_namespaces", "list_namespaced_config_map"),
                label_selector=f"{RESPONSE_BODY_LABEL}=true"),
)


# -- timing -----------------------------------------------------------------------


@frozen
class WatchTiming:
    """The knobs, in seconds.

    @ivar server_timeout: C{timeoutSeconds} asked of the server; each watch
        gets up to 20% more, at random, so the kinds do not all reconnect at
        the same moment.
    @ivar read_timeout: the client's per-read timeout on a watch; it must
        outlast the longest quiet stretch of a healthy stream (the server
        ends it at C{timeoutSeconds}), so by default it is the largest
        jittered C{server_timeout} plus 30 s.  It is what finally notices a
        half-open connection.
    @ivar list_timeout: the per-read timeout of a list.
    @ivar backoff_base, backoff_cap: the first retry waits about
        C{backoff_base}, each later one twice as long, up to C{backoff_cap};
        each delay is jittered to between half and all of that.
    @ivar min_watch: a watch that ends sooner than this without delivering
        a single line counts as a failure (and backs off), so a server that
        accepts and hangs up cannot make us spin.
    @ivar resync_interval: every so often each kind re-lists from scratch,
        a safety net against any drift (0 turns it off).  The Go
        interceptor's cache resyncs hourly by default.
    @ivar health_interval: how often dead threads are looked for.
    @ivar stop_timeout: how long C{stopService} waits for the threads.
    """

    server_timeout: int = 300
    connect_timeout: float = 5.0
    read_timeout: float | None = None
    list_timeout: float = 120.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    min_watch: float = 1.0
    resync_interval: float = 3600.0
    health_interval: float = 10.0
    stop_timeout: float = 2.0

    @property
    def watch_read_timeout(self) -> float:
        if self.read_timeout is not None:
            return self.read_timeout
        return self.server_timeout * 1.2 + 30.0


def backoff_delay(failures: int, base: float, cap: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential in C{failures} (>= 1), capped, jittered to [d/2, d]."""
    d = min(cap, base * (2 ** min(failures - 1, 32)))
    return d / 2 + (d / 2) * rand()


# -- the thread -----------------------------------------------------------------


_MISSING = object()


class Expired(Exception):
    """The resourceVersion we hold is too old (410 Gone): re-list."""


class WatchError(Exception):
    """The server sent an ERROR event other than 410."""


@define
class WatchStats:
    """Counters a thread updates and the reactor may read (ints; no lock)."""

    lists: int = 0
    watches: int = 0
    expired: int = 0
    failures: int = 0
    resource_version: str | None = None
    last_error: str | None = None
    objects: int = 0


#: deliver(op, *args): op is "replace" (objects), "put" (key, value),
#: "remove" (key), "apply" ({key: value} to put, [key] to remove), "listed"
#: (no args: a list is over and handed over, changes or not) or "log"
#: (level, format, fields); must be thread-safe.
Deliver = Callable[..., None]


class KindWatcher:
    """List-then-watch of one kind on its own daemon thread.

    @param template_client: its configuration is reused; the thread gets
        its own ApiClient so that stopping it can cut only its sockets.
    @param deliver: see L{Deliver}; called on this watcher's thread.
    @param on_exit: called on this watcher's thread as its last act.
    @param parse: C{dict -> Parsed | None}, raising L{InvalidResource}.
    @param parse_lock: held while a list is decoded and parsed.  Parsing is
        pure Python, so threads parsing side by side gain nothing (one GIL)
        but make the reactor thread queue behind several of them for the
        GIL; sharing one lock keeps it to one.
    """

    def __init__(
        self,
        kind: WatchedKind,
        template_client: k8s_client.ApiClient,
        namespace: str,
        deliver: Deliver,
        *,
        timing: WatchTiming = WatchTiming(),
        parse: Callable[[dict], object] = parse_object,
        on_exit: Callable[[], None] = lambda: None,
        rand: Callable[[], float] = random.random,
        parse_lock: threading.Lock | None = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.timing = timing
        self.stats = WatchStats()
        self._template = template_client
        self._deliver = deliver
        self._parse = parse
        self._on_exit = on_exit
        self._rand = rand
        self._parse_lock = parse_lock if parse_lock is not None else threading.Lock()
        self._stopping = threading.Event()
        self._relist = threading.Event()
        self._lock = threading.Lock()
        self._resp = None
        self._resp_is_watch = False
        self._tracker: SocketTracker | None = None
        self._invalid: dict[str, str] = {}
        #: what this thread has handed over, as the sink now holds it (once
        #: the first list is delivered); lets a re-list send only changes.
        self._known: dict[str, object] | None = None
        #: the resourceVersion of each object as last seen, valid or not: a
        #: re-list need not parse again what has not changed since.
        self._rvs: dict[str, str] = {}
        self.thread = threading.Thread(
            target=self._run, name=f"kube-watch-{kind.kind}", daemon=True)

    # -- control, from any thread ---------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end, and wake it from whatever it blocks on."""
        self._stopping.set()
        self._interrupt(watch_only=False)

    def request_relist(self) -> None:
        """Re-list soon: now if watching, else after the current call."""
        self._relist.set()
        self._interrupt(watch_only=True)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _interrupt(self, watch_only: bool) -> None:
        with self._lock:
            resp, is_watch = self._resp, self._resp_is_watch
            tracker = self._tracker
        if resp is not None and (is_watch or not watch_only):
            try:
                resp.shutdown()
            except Exception:
                pass  # already released or closed: nothing is blocked on it
        if not watch_only and tracker is not None:
            tracker.cut_all()

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        api = None
        try:
            api, tracker = interruptible_client(self._template)
            with self._lock:
                self._tracker = tracker
            if self._stopping.is_set():
                return
            self._loop(api)
        except BaseException as e:  # a bug: say so; the health check restarts us
            self._log("error", "{kind}: watch thread crashed: {error}", error=_describe(e))
        finally:
            if api is not None:
                try:
                    api.close()
                except Exception:
                    pass
            self._on_exit()

    def _loop(self, api) -> None:
        rv: str | None = None
        failures = 0
        expired_streak = 0
        quick_ends = 0
        while not self._stopping.is_set():
            step = "list"
            try:
                if rv is None or self._relist.is_set():
                    self._relist.clear()
                    rv = self._list(api)
                step = "watch"
                rv, healthy = self._watch(api, rv)
                if healthy or self._relist.is_set():
                    failures = expired_streak = quick_ends = 0
                elif not self._stopping.is_set():
                    # Once is a drop like any other; again and again is a
                    # server that hangs up on us, and we must not spin.
                    quick_ends += 1
                    if quick_ends > 1:
                        self._pause(quick_ends - 1,
                                    "watch keeps ending at once; retrying in {delay:.2f}s")
            except Expired as e:
                if self._stopping.is_set():
                    break
                rv = None
                expired_streak += 1
                self.stats.expired += 1
                self._log("info", "{kind}: resourceVersion expired ({error}); re-listing",
                          error=str(e))
                if expired_streak > 1:
                    self._pause(expired_streak - 1, "expired again; re-listing in {delay:.2f}s")
            except Exception as e:
                if self._stopping.is_set():
                    break
                rv = None
                failures += 1
                self.stats.failures += 1
                self.stats.last_error = _describe(e)
                self._pause(failures, "{step} failed: {error}; re-listing in {delay:.2f}s",
                            step=step, error=self.stats.last_error)

    def _pause(self, failures: int, message: str, **fields) -> None:
        delay = backoff_delay(failures, self.timing.backoff_base, self.timing.backoff_cap,
                              self._rand)
        self._log("warn", "{kind}: " + message, delay=delay, **fields)
        self._stopping.wait(delay)

    def _call(self, api, *, watch: bool, **kw):
        """One request; registers its response so that stop() can cut it."""
        t = self.timing
        if watch:
            jitter = 1.0 + 0.2 * self._rand()
            kw.update(watch=True, allow_watch_bookmarks=True,
                      timeout_seconds=max(1, int(t.server_timeout * jitter)),
                      _request_timeout=(t.connect_timeout, t.watch_read_timeout))
        else:
            kw.update(_request_timeout=(t.connect_timeout, t.list_timeout))
        if self.kind.label_selector:
            kw["label_selector"] = self.kind.label_selector
        try:
            resp = self.kind.list_call(api, self.namespace, _preload_content=False, **kw)
        except ApiException as e:
            if e.status == 410:
                raise Expired(_describe(e)) from None
            raise
        with self._lock:
            self._resp, self._resp_is_watch = resp, watch
        if self._stopping.is_set() or (watch and self._relist.is_set()):
            self._interrupt(watch_only=not self._stopping.is_set())
        return resp

    def _done_with(self, resp, reuse: bool = True) -> None:
        """Forget C{resp}; keep its connection only if its body was read to
        the end (a half-read watch stream must not go back to the pool)."""
        with self._lock:
            self._resp = None
        try:
            if not reuse:
                resp.close()  # on our own thread: safe, unlike from another
            resp.release_conn()
        except Exception:
            pass

    def _list(self, api) -> str:
        resp = self._call(api, watch=False)
        complete = False
        try:
            body = resp.data
            complete = True
        finally:
            self._done_with(resp, reuse=complete)
        with self._parse_lock:
            rv, objects, invalid, rvs = self._parse_list(body)
        if not rv:
            raise WatchError("list response without metadata.resourceVersion")
        for key, error in invalid.items():
            if self._invalid.get(key) != error:
                self._log("warn", "skipping invalid object: {error}", error=error)
        self._invalid = invalid
        if self._stopping.is_set():
            return rv
        self._rvs = rvs
        self._hand_over_list(objects)
        self._deliver("listed")
        self.stats.lists += 1
        self.stats.objects = len(objects)
        self.stats.resource_version = rv
        self._log("info", "{kind}: listed {count} objects at resourceVersion {rv}",
                  count=len(objects), rv=rv)
        return rv

    def _hand_over_list(self, objects: dict[str, object]) -> None:
        """The first list replaces everything (and marks the kind synced);
        a re-list sends only what changed, so that re-listing an unchanged
        cluster costs the reactor nothing, unless most of it changed."""
        known = self._known
        self._known = objects
        if known is None:
            self._deliver("replace", objects)
            return
        removed = [key for key in known if key not in objects]
        changed = {key: value for key, value in objects.items()
                   if known.get(key, _MISSING) != value}
        if len(removed) + len(changed) > max(64, len(objects) // 2):
            self._deliver("replace", objects)
        elif removed or changed:
            self._deliver("apply", changed, removed)

    def _put(self, key: str, value) -> None:
        self._known[key] = value
        self._deliver("put", key, value)

    def _remove(self, key: str) -> None:
        self._known.pop(key, None)
        self._deliver("remove", key)

    def _parse_list(self, body: bytes):
        """(resourceVersion, {key: value}, {key: error line}, {key: object's
        resourceVersion}) of a list body."""
        rv = ""
        objects = {}
        invalid: dict[str, str] = {}
        rvs: dict[str, str] = {}
        known = self._known or {}
        # Item by item, so that the GIL (and so the reactor) gets a turn
        # between items; see keda_proxy.state._kube_json.
        for member, item in iter_list(body.decode("utf-8", errors="replace")):
            if member == "metadata" and isinstance(item, dict):
                rv = str(item.get("resourceVersion") or "")
            if member is not ITEM or not isinstance(item, dict):
                continue
            # A typed list names the kind once, on the list; parse_object
            # needs it on each item.
            item.setdefault("apiVersion", self.kind.api_version)
            item.setdefault("kind", self.kind.kind)
            meta = item.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            key = object_key(meta.get("namespace") or "default", str(meta.get("name") or "?"))
            item_rv = meta.get("resourceVersion")
            if item_rv and self._rvs.get(key) == item_rv:
                # The same resourceVersion is the same object: keep what it
                # parsed to last time.  This is what makes a re-list of a
                # large, mostly unchanged cluster cheap (and allocation-free,
                # which spares the proxy a full garbage collection).
                rvs[key] = item_rv
                if key in known:
                    objects[key] = known[key]
                elif key in self._invalid:
                    invalid[key] = self._invalid[key]
                continue
            key, value, error = self._parse_item(item, key)
            if item_rv:
                rvs[key] = item_rv
            if error is not None:
                invalid[key] = error
            elif value is not None:
                objects[key] = value
        return rv, objects, invalid, rvs

    def _watch(self, api, rv: str) -> tuple[str, bool]:
        """Watch from C{rv} until the stream ends; returns (rv, healthy)."""
        resp = self._call(api, watch=True, resource_version=rv)
        self.stats.watches += 1
        started = time.monotonic()
        lines = 0
        ended = False
        try:
            for line in iter_resp_lines(resp):
                if self._stopping.is_set() or self._relist.is_set():
                    break
                if not line:
                    continue
                lines += 1
                rv = self._on_event(json.loads(line), rv)
                self.stats.resource_version = rv
            else:
                ended = True
        except (urllib3.exceptions.HTTPError, OSError) as e:
            # The stream broke after it was established (the server went
            # away, a proxy cut it, the read timed out).  The
            # resourceVersion is still good: resume from it; if the server
            # has moved on too far it will tell us with a 410.
            if not self._stopping.is_set() and not self._relist.is_set():
                self._log("info", "{kind}: watch stream broke ({error}); resuming at {rv}",
                          error=_describe(e), rv=rv)
        finally:
            self._done_with(resp, reuse=ended)
        healthy = lines > 0 or time.monotonic() - started >= self.timing.min_watch
        return rv, healthy

    def _on_event(self, event: dict, rv: str) -> str:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise WatchError(f"malformed watch event {str(event)[:200]}")
        if kind == "ERROR":
            code = obj.get("code")
            message = f"{code} {obj.get('reason', '')}: {obj.get('message', '')}"
            if code == 410:
                raise Expired(message)
            raise WatchError(f"ERROR event {message}")
        meta = obj.get("metadata") or {}
        new_rv = str(meta.get("resourceVersion") or rv)
        if kind == "BOOKMARK":
            return new_rv
        key = object_key(meta.get("namespace") or "default", str(meta.get("name") or "?"))
        if kind in ("ADDED", "MODIFIED"):
            obj.setdefault("apiVersion", self.kind.api_version)
            obj.setdefault("kind", self.kind.kind)
            key, value, error = self._parse_item(obj, key)
            if meta.get("resourceVersion"):
                self._rvs[key] = str(meta["resourceVersion"])
            if error is not None:
                if self._invalid.get(key) != error:
                    self._log("warn", "skipping invalid object: {error}", error=error)
                self._invalid[key] = error
                # Whatever was there before is no longer what the cluster
                # says: an InterceptorRoute edited into an invalid state
                # stops routing rather than routing by stale rules.
                self._remove(key)
            elif value is None:
                self._invalid.pop(key, None)
                self._remove(key)
            else:
                self._invalid.pop(key, None)
                self._put(key, value)
        elif kind == "DELETED":
            self._invalid.pop(key, None)
            self._rvs.pop(key, None)
            self._remove(key)
        else:
            self._log("warn", "{kind}: ignoring watch event of type {type!r}", type=kind)
        return new_rv

    def _parse_item(self, item: dict, key: str | None = None):
        """(key, value or None, error line or None); never raises."""
        meta = item.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
            if key is None:
                key = object_key(meta.get("namespace") or "default",
                                 str(meta.get("name") or "?"))
        key = key or "?"
        try:
            parsed = self._parse(item)
        except InvalidResource as e:
            return key, None, str(e)
        except Exception as e:  # a parser bug must not take the watch down
            return key, None, f"{self.kind.kind} {key}: cannot parse: {e!r}"
        if parsed is None:
            return key, None, None
        if parsed.kind != self.kind.kind:
            return key, None, f"{self.kind.kind} {key}: parsed as {parsed.kind}"
        return parsed.key, parsed.value, None

    def _log(self, level: str, fmt: str, **fields) -> None:
        fields.setdefault("kind", self.kind.kind)
        self._deliver("log", level, fmt, fields)


def _describe(e: BaseException) -> str:
    """One line for a log: the status for API errors, else the exception."""
    if isinstance(e, ApiException):
        reason = e.reason or ""
        try:
            message = json.loads(e.body or b"{}").get("message", "")
        except Exception:
            message = ""
        return f"HTTP {e.status} {reason}{': ' + message if message else ''}".strip()
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
