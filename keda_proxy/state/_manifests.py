"""
The manifest source: cluster state from YAML/JSON files instead of the API.

This is the embedded default (``make run`` without a cluster).  It reads
the same objects a user would ``kubectl apply`` -- InterceptorRoutes,
HTTPScaledObjects, Services, EndpointSlices, ConfigMaps -- from one file
or a folder of files, and re-reads them when they change, so editing a
file while the proxy runs changes its routes.

Change detection is a cheap poll of ``os.stat`` on the clock, not inotify:
it works the same on every platform and inside ConfigMap volume mounts,
where files are symlinks that are swapped atomically (``stat`` follows the
link, and the swap changes the inode it reports).

Reading and parsing run in the reactor's thread pool, never on the reactor
thread, so requests keep flowing while a large file is parsed; the result
is applied to the sink back on the reactor thread.  Only the files whose
``(path, inode, mtime, size)`` changed are parsed again; the others reuse
their parsed objects.  YAML goes through libyaml's C loader when PyYAML
has it.  The first read, in C{startService}, runs on the calling thread so
that the first snapshot exists before any request can arrive.

Failure rules, so a typo never takes routes away:

  - a YAML/JSON syntax error in any file applies nothing; the last good
    state keeps serving until the files change again;
  - an invalid object is skipped with one warning, the rest applies;
  - a file larger than L{MAX_FILE_BYTES} is skipped with one log line, the
    rest applies;
  - a path that vanishes keeps the last good state.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Callable

import yaml
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IStateSource
from keda_proxy.state._model import ALL_KINDS
from keda_proxy.state._resources import SUPPORTED_TYPES, InvalidResource, expand_lists, parse_object

#: File name endings read from a folder.
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

#: The largest manifest file that is read (8 MiB); a larger one is skipped
#: with one log line.  Parsed YAML takes ten times its size in memory or
#: more, and a folder is re-read while the proxy serves.
MAX_FILE_BYTES = 8 * 1024 * 1024

#: Signature of a path that is not there (distinct from "never scanned").
_MISSING = ("<missing>",)


def safe_loader(module: Any = yaml) -> type:
    """libyaml's C{CSafeLoader} when PyYAML was built with libyaml (several
    times faster), else the pure-Python C{SafeLoader}."""
    return getattr(module, "CSafeLoader", None) or module.SafeLoader


#: The loader of every YAML manifest.
LOADER = safe_loader()


class ManifestError(Exception):
    """A manifest path that cannot be used; the message is one line."""


class _LoadError(Exception):
    """One file could not be parsed; the message is the one log line."""


#: A log line to emit on the reactor thread: (level, format, fields).
_Event = tuple[str, str, dict]


@frozen
class _FileRead:
    """What one version of one file contributes.

    @ivar signature: C{(path, inode, mtime_ns, size)} when it was read.
    @ivar error: the syntax/read error line; the file applies nothing, and
        neither does any other while it stands.
    @ivar too_large: the file was over the size limit and is skipped.
    @ivar objects: C{(where, Parsed)} for every supported object, in order.
    @ivar skipped: how many invalid objects were left out.
    """

    signature: tuple
    error: str | None = None
    too_large: bool = False
    objects: tuple = ()
    skipped: int = 0


@frozen
class _Outcome:
    """The result of one reload, computed in a thread, applied on the reactor."""

    cache: dict            # path -> _FileRead, for the files that exist now
    events: tuple          # _Event lines to log, in order
    error: str | None      # the first file's error: nothing applies
    by_kind: dict          # kind -> {key: value}
    changed: tuple         # the kinds whose objects differ from the last applied
    files: int             # files that applied
    reread: int            # files parsed this time (the others came from the cache)
    skipped: int           # invalid objects left out
    too_large: int         # files over the size limit


@implementer(IStateSource)
@define(slots=False, eq=False)
class ManifestSource(Service):
    """Feeds an L{IStateSink} from manifest files and keeps it current.

    @ivar path: a YAML/JSON file, or a folder whose C{*.yaml}, C{*.yml} and
        C{*.json} files are read in name order (not recursively; names
        starting with "." are skipped).
    @ivar sink: the L{keda_proxy.interfaces.IStateSink} to feed; only ever
        called on the reactor thread.
    @ivar clock: an C{IReactorTime} driving the change poll.
    @ivar reactor: the C{IReactorThreads} whose thread pool reads and
        parses changed files, and which delivers the result to the reactor
        thread.  L{None} uses C{clock} if it is one; a clock without threads
        (a test's C{Clock}) parses on the calling thread.
    @ivar interval: seconds between polls.
    @ivar max_file_bytes: files larger than this are skipped.
    @ivar last_error: the last syntax/read error line, or L{None} once a
        read has applied.
    """

    path: str = field(converter=os.fspath)
    sink: Any
    clock: Any
    interval: float = 1.0
    reactor: Any = None
    max_file_bytes: int = MAX_FILE_BYTES
    log: Logger = field(factory=lambda: Logger(namespace=__name__))
    last_error: str | None = field(default=None, init=False)
    _signature: Any = field(default=None, init=False)
    _cache: dict = field(factory=dict, init=False)
    _applied: dict | None = field(default=None, init=False)
    _loop: LoopingCall | None = field(default=None, init=False)
    _reloading: bool = field(default=False, init=False)
    _again: bool = field(default=False, init=False)

    #: The first good read replaces every kind, so /readyz waits for all.
    kinds = ALL_KINDS

    def __attrs_post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Fail startup with one line if the path cannot be a manifest source."""
        if not os.path.exists(self.path):
            raise ManifestError(f"manifest path {self.path} does not exist")
        if not (os.path.isfile(self.path) or os.path.isdir(self.path)):
            raise ManifestError(f"manifest path {self.path} is neither a file nor a folder")

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Read on this thread so the first snapshot exists before any
        # request can arrive (unless a reload from before a stop is still
        # in flight: that one polls again when it is done).
        if self._reloading:
            self._again = True
        else:
            self._start_reload(threaded=False)
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    # -- polling ----------------------------------------------------------

    def poll(self) -> None:
        """Start a re-read in a thread if the files changed.

        One reload runs at a time: a poll during one is remembered, and
        polls again as soon as it is done.  Never raises: it runs in a
        LoopingCall, which an exception would stop.
        """
        if self._reloading:
            self._again = True
            return
        self._start_reload(threaded=True)

    def _start_reload(self, threaded: bool) -> None:
        try:
            files = self._changed_files()
        except Exception:  # noqa: BLE001 -- logged with traceback; keep polling
            self.log.failure("unexpected error reading manifests from {path}", path=self.path)
            return
        if files is None:
            return
        work = _Reader(files, self._cache, self.max_file_bytes, self._applied)
        self._reloading = True
        d = self._in_thread(work) if threaded else maybeDeferred(work)
        d.addCallback(self._apply)
        d.addErrback(lambda f: self.log.failure(
            "unexpected error reading manifests from {path}", f, path=self.path))
        d.addBoth(self._reloaded)

    def _in_thread(self, work: Callable[[], _Outcome]) -> Deferred:
        reactor = self.reactor if self.reactor is not None else self.clock
        if not IReactorThreads.providedBy(reactor):
            return maybeDeferred(work)
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    def _reloaded(self, _: object) -> None:
        self._reloading = False
        if self._again:
            self._again = False
            if self.running:
                self.poll()

    def _changed_files(self) -> list[tuple] | None:
        """The signatures of the files to read, or None if nothing changed."""
        try:
            signature = self._scan()
        except OSError as e:
            if self._signature is not _MISSING:
                self._signature = _MISSING
                self.log.error(
                    "manifest path {path} is unavailable ({reason}); "
                    "keeping the last good state",
                    path=self.path, reason=e.strerror or str(e))
            return None
        if signature == self._signature:
            return None
        self._signature = signature
        return list(signature)

    def _scan(self) -> tuple:
        """C{(path, inode, mtime_ns, size)} of every file to read."""
        if os.path.isdir(self.path):
            names = sorted(
                n for n in os.listdir(self.path)
                if n.endswith(MANIFEST_SUFFIXES) and not n.startswith("."))
            candidates = [os.path.join(self.path, n) for n in names]
        else:
            os.stat(self.path)  # raises if it vanished
            candidates = [self.path]
        signature = []
        for path in candidates:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # deleted between listing and stat; it is gone
            if not stat.S_ISREG(st.st_mode):
                continue  # folders, pipes and devices are not manifests
            signature.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(signature)

    # -- applying (on the reactor thread) ---------------------------------

    def _apply(self, outcome: _Outcome) -> bool:
        if not self.running:
            # Stopped while the thread was reading: drop it, and read
            # again if the service starts again.
            self._signature = None
            return False
        self._cache = outcome.cache
        for level, fmt, fields in outcome.events:
            getattr(self.log, level)(fmt, **fields)
        if outcome.error is not None:
            self.last_error = outcome.error
            self.log.error("{error}; nothing applied, keeping the last good state",
                           error=outcome.error)
            return False
        for kind in outcome.changed:
            self.sink.replace(kind, outcome.by_kind[kind])
        self._applied = outcome.by_kind
        self.last_error = None
        self.log.info(
            "loaded {count} file(s) ({reread} re-read) from {path}: {counts}; "
            "{skipped} invalid skipped{too_large}",
            count=outcome.files, reread=outcome.reread, path=self.path,
            skipped=outcome.skipped,
            too_large=(f"; {outcome.too_large} too large skipped"
                       if outcome.too_large else ""),
            counts=", ".join(f"{len(outcome.by_kind[k])} {k}" for k in ALL_KINDS))
        return True


# -- reading (in a thread: no logging, no sink, no shared state) -----------


@define
class _Reader:
    """One reload: parse the changed files, reuse the others, merge.

    Touches nothing but its arguments and the files, so it can run in a
    thread; log lines come back in the L{_Outcome}.
    """

    files: list[tuple]
    cache: dict
    max_file_bytes: int
    applied: dict | None = None  # kind -> objects last handed to the sink

    def __call__(self) -> _Outcome:
        cache: dict[str, _FileRead] = {}
        events: list[_Event] = []
        reread = 0
        for signature in self.files:
            path = signature[0]
            read = self.cache.get(path)
            if read is None or read.signature != signature:
                read = _read_file(signature, self.max_file_bytes, events)
                reread += 1
            cache[path] = read

        error = next((r.error for r in cache.values() if r.error is not None), None)
        by_kind: dict[str, dict[str, Any]] = {k: {} for k in ALL_KINDS}
        origin: dict[tuple[str, str], str] = {}
        if error is None:
            for read in cache.values():
                for where, parsed in read.objects:
                    previous = origin.get((parsed.kind, parsed.key))
                    if previous is not None:
                        events.append(("warn", "{where}: {kind} {key} is also defined in "
                                       "{previous}; the later one wins",
                                       dict(where=where, kind=parsed.kind, key=parsed.key,
                                            previous=previous)))
                    origin[(parsed.kind, parsed.key)] = where
                    by_kind[parsed.kind][parsed.key] = parsed.value
        # A kind whose objects are equal to what the sink holds is not
        # replaced again: the store would rebuild its snapshot for nothing.
        changed = tuple(k for k in ALL_KINDS
                        if self.applied is None or by_kind[k] != self.applied[k])
        return _Outcome(
            cache=cache, events=tuple(events), error=error, by_kind=by_kind,
            changed=changed,
            files=sum(1 for r in cache.values() if not r.too_large), reread=reread,
            skipped=sum(r.skipped for r in cache.values()),
            too_large=sum(1 for r in cache.values() if r.too_large))


def _read_file(signature: tuple, max_bytes: int, events: list[_Event]) -> _FileRead:
    """Read and parse one file; its warnings are appended to C{events}."""
    path = signature[0]
    try:
        documents = _load(path, max_bytes)
    except _TooLarge as e:
        events.append(("error", "skipping {path}: {size} bytes is over the {limit}-byte "
                       "limit for a manifest file",
                       dict(path=path, size=e.size, limit=max_bytes)))
        return _FileRead(signature, too_large=True)
    except _LoadError as e:
        return _FileRead(signature, error=str(e))
    objects = []
    skipped = 0
    for index, doc in enumerate(documents, 1):
        if doc is None:  # an empty document, e.g. a trailing "---"
            continue
        where = f"{path} document {index}"
        for obj in expand_lists(doc):
            try:
                parsed = parse_object(obj)
            except InvalidResource as e:
                skipped += 1
                events.append(("warn", "{where}: skipping invalid {error}",
                               dict(where=where, error=str(e))))
                continue
            if parsed is None:
                event = _ignored(where, obj)
                if event is not None:
                    events.append(event)
                continue
            objects.append((where, parsed))
    return _FileRead(signature, objects=tuple(objects), skipped=skipped)


def _ignored(where: str, obj: Any) -> _Event | None:
    """A warning about a likely typo (our kind with a wrong apiVersion, say).

    Deployments and other kinds next to the routes are normal and stay
    quiet; so do ConfigMaps without the response-body label.
    """
    if not isinstance(obj, dict):
        return None
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if (api_version, kind) in SUPPORTED_TYPES:
        return None
    ours = {k for _, k in SUPPORTED_TYPES}
    if kind in ours or (isinstance(api_version, str)
                        and api_version.startswith("http.keda.sh/")):
        expected = sorted(f"{a} {k}" for a, k in SUPPORTED_TYPES)
        return ("warn", "{where}: ignoring {kind!r} with apiVersion {api_version!r}; "
                "expected one of: {expected}",
                dict(where=where, kind=kind, api_version=api_version,
                     expected=", ".join(expected)))
    return None


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


def _load(path: str, max_bytes: int = MAX_FILE_BYTES) -> list:
    """Every document of one file, L{_TooLarge}, or L{_LoadError} with a
    one-line reason."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _TooLarge(size)
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise _LoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:  # it grew after the fstat
        raise _TooLarge(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _LoadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    del data
    if path.endswith(".json"):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as e:
            raise _LoadError(f"{path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None
        except RecursionError as e:
            raise _LoadError(f"{path}: JSON error: {_one_line(str(e))}") from None
    try:
        return list(yaml.load_all(text, Loader=LOADER))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = _one_line(e.problem or e.context or "invalid YAML")
        if mark is None:
            raise _LoadError(f"{path}: YAML syntax error: {problem}") from None
        raise _LoadError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise _LoadError(f"{path}: YAML error: {_one_line(str(e))}") from None
    except (ValueError, RecursionError) as e:
        # e.g. an unquoted timestamp that is not a real date ("2024-13-45").
        raise _LoadError(f"{path}: YAML error: {_one_line(str(e))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
