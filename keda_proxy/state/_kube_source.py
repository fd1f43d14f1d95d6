"""
The Kubernetes source: watch threads feeding the state store.

L{KubernetesSource} is a Service that owns one L{KindWatcher} daemon thread
per watched kind.  The threads block on the API server and parse what it
sends; everything they produce crosses to the reactor through
C{reactor.callFromThread}, and only there does it touch the sink (the
L{keda_proxy.state._store.StateStore}), which coalesces bursts and swaps
immutable snapshots.  So the reactor never waits on the API server, and
readers never lock.

While the API server is away the store simply keeps its last snapshot;
the threads retry with backoff and re-list when it is back.  A
LoopingCall on the injected clock restarts any thread that died and
triggers the periodic resync (a fresh list of every kind).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IStateSource
from keda_proxy.state._kube_client import KubeConfigError, load_api_client
from keda_proxy.state._kube_watch import WATCHED_KINDS, KindWatcher, WatchedKind, WatchTiming
from keda_proxy.state._resources import parse_object

__all__ = ["KubeConfigError", "KubernetesSource", "WatchTiming", "load_api_client"]

log = Logger()

_LOG_LEVELS = {"debug", "info", "warn", "error", "critical"}

#: Seconds after the last list was handed over before L{release_free_heap}
#: runs: time for the store to build its snapshot from it.
TRIM_DELAY = 2.0


def _find_malloc_trim():
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's
    C{malloc_trim(0)}); returns whether it could.

    A list leaves megabytes free inside the heaps (its body, its decoded
    text, the raw objects; on the watch threads' own arenas too) that glibc
    keeps for later; with 1,000 routes this lowers the idle RSS by about
    3 MiB (docs/performance.md, Memory).  It takes well under a
    millisecond.
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


@implementer(IStateSource)
class KubernetesSource(Service):
    """Feeds C{sink} from the Kubernetes API.

    @param sink: an L{keda_proxy.interfaces.IStateSink}; called on the
        reactor thread only.
    @param reactor: used only for C{callFromThread}.
    @param clock: an C{IReactorTime} for the health/resync LoopingCall and
        the stop timeout.
    @param api_client: a C{kubernetes.client.ApiClient} (see
        L{keda_proxy.state._kube_client.load_api_client}), used as a template:
        each thread builds its own client from its configuration.
    @param namespace: watch only this namespace; "" watches all.
    @param timing: L{WatchTiming}.
    @param resync_period: overrides C{timing.resync_interval} (seconds; 0
        turns the periodic re-list off), for
        C{KEDA_HTTP_SCALER_CONFIG_MAP_INFORMER_RSYNC_PERIOD}.
    @param kinds: which L{WatchedKind}s to watch (all five by default).
    @param parse: the object parser, C{dict -> Parsed | None}.
    """

    name = "kubernetes-source"

    def __init__(
        self,
        sink,
        reactor,
        clock,
        api_client,
        namespace: str = "",
        *,
        timing: WatchTiming = WatchTiming(),
        resync_period: float | None = None,
        kinds: Iterable[WatchedKind] = WATCHED_KINDS,
        parse: Callable[[dict], object] = parse_object,
    ) -> None:
        self.sink = sink
        self.reactor = reactor
        self.clock = clock
        self.api_client = api_client
        self.namespace = namespace or ""
        if resync_period is not None:
            timing = attrs.evolve(timing, resync_interval=max(0.0, resync_period))
        self.timing = timing
        self._kinds = tuple(kinds)
        self._parse = parse
        #: kind -> its current watcher.
        self.watchers: dict[str, KindWatcher] = {}
        #: every watcher whose thread has not yet reported its end.
        self._live: set[KindWatcher] = set()
        self._stop_waiters: list[Deferred] = []
        #: one list parsed at a time; see KindWatcher's parse_lock.
        self._parse_lock = threading.Lock()
        self._health = None
        self._last_resync = 0.0
        self._trim = None

    @property
    def kinds(self):
        """The kinds this source feeds (L{IStateSource})."""
        return tuple(k.kind for k in self._kinds)

    # -- Service ------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        scope = f"namespace {self.namespace!r}" if self.namespace else "all namespaces"
        log.info("Watching {kinds} in {scope}", kinds=", ".join(self.kinds), scope=scope)
        for kind in self._kinds:
            self._spawn(kind)
        self._last_resync = self.clock.seconds()
        self._health = LoopingCall(self._check)
        self._health.clock = self.clock
        self._health.start(self.timing.health_interval, now=False)

    def stopService(self) -> Deferred:
        """Stop every thread; fires when all have ended, or after the timeout.

        It never fails: a thread still stuck after C{stop_timeout} is a
        daemon thread and cannot keep the process alive, so shutdown goes
        on and the stragglers are named in a warning.
        """
        Service.stopService(self)
        if self._health is not None and self._health.running:
            self._health.stop()
        if self._trim is not None and self._trim.active():
            self._trim.cancel()
        for watcher in list(self._live):
            watcher.stop()
        if not self._live:
            return succeed(None)
        d = Deferred()
        self._stop_waiters.append(d)
        d.addTimeout(self.timing.stop_timeout, self.clock, onTimeoutCancel=self._stop_timed_out)
        return d

    def _stop_timed_out(self, result, timeout):
        names = sorted(w.thread.name for w in self._live)
        log.warn("Kubernetes watch threads still running {timeout}s after stop: {names}",
                 timeout=timeout, names=", ".join(names))
        return None

    # -- threads --------------------------------------------------------------------

    def _spawn(self, kind: WatchedKind) -> KindWatcher:
        def deliver(op, *args):
            self.reactor.callFromThread(self._delivered, watcher, op, args)

        def on_exit():
            self.reactor.callFromThread(self._exited, watcher)

        watcher = KindWatcher(kind, self.api_client, self.namespace, deliver,
                              timing=self.timing, parse=self._parse, on_exit=on_exit,
                              parse_lock=self._parse_lock)
        self.watchers[kind.kind] = watcher
        self._live.add(watcher)
        watcher.start()
        return watcher

    def _delivered(self, watcher: KindWatcher, op: str, args: tuple) -> None:
        """On the reactor: apply one thing a thread handed over."""
        if op == "log":
            level, fmt, fields = args
            emit = getattr(log, level if level in _LOG_LEVELS else "info")
            emit(fmt, **fields)
            return
        # Anything from a thread that is being stopped or was replaced is
        # stale: only the current watcher of a running source may write.
        if not self.running or self.watchers.get(watcher.kind.kind) is not watcher:
            return
        if op == "listed":  # its list is over: the heap holds what it freed
            self._trim_soon()
            return
        kind = watcher.kind.kind
        try:
            if op == "apply":
                puts, removes = args
                for key in removes:
                    self.sink.remove(kind, key)
                for key, value in puts.items():
                    self.sink.put(kind, key, value)
            else:
                getattr(self.sink, op)(kind, *args)
        except Exception:
            log.failure("Applying {op} for {kind} failed", op=op, kind=watcher.kind.kind)

    def _trim_soon(self) -> None:
        """L{release_free_heap} once the lists have settled."""
        if self._trim is not None and self._trim.active():
            self._trim.reset(TRIM_DELAY)
        else:
            self._trim = self.clock.callLater(TRIM_DELAY, release_free_heap)

    def _exited(self, watcher: KindWatcher) -> None:
        """On the reactor: a thread has run its last line."""
        watcher.thread.join(0.5)  # it is past its last line: this is immediate
        self._live.discard(watcher)
        if not self._live:
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                if not d.called:
                    d.callback(None)

    def _check(self) -> None:
        """Restart dead threads; request the periodic resync when due."""
        for kind in self._kinds:
            watcher = self.watchers.get(kind.kind)
            if watcher is not None and not watcher.is_alive() and not watcher.stopping:
                log.error("{kind}: watch thread ended unexpectedly; restarting it",
                          kind=kind.kind)
                self._spawn(kind)
        interval = self.timing.resync_interval
        now = self.clock.seconds()
        if interval and now - self._last_resync >= interval:
            self._last_resync = now
            for watcher in self.watchers.values():
                watcher.request_relist()

    def status(self) -> dict[str, dict]:
        """Per kind: thread alive, list/watch counters, last error (for debugging)."""
        out = {}
        for kind, w in self.watchers.items():
            s = w.stats
            out[kind] = {
                "alive": w.is_alive(), "lists": s.lists, "watches": s.watches,
                "expired": s.expired, "failures": s.failures, "objects": s.objects,
                "resourceVersion": s.resource_version, "lastError": s.last_error,
            }
        return out
