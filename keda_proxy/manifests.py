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

Failure rules, so a typo never takes routes away:

  - a YAML/JSON syntax error in any file applies nothing; the last good
    state keeps serving until the files change again;
  - an invalid object is skipped with one warning, the rest applies;
  - a path that vanishes keeps the last good state.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from keda_proxy.interfaces import IStateSource
from keda_proxy.model import ALL_KINDS
from keda_proxy.resources import SUPPORTED_TYPES, InvalidResource, expand_lists, parse_object

#: File name endings read from a folder.
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

#: Signature of a path that is not there (distinct from "never scanned").
_MISSING = ("<missing>",)


class ManifestError(Exception):
    """A manifest path that cannot be used; the message is one line."""


class _LoadError(Exception):
    """One file could not be parsed; the message is the one log line."""


@implementer(IStateSource)
@define(slots=False, eq=False)
class ManifestSource(Service):
    """Feeds an L{IStateSink} from manifest files and keeps it current.

    @ivar path: a YAML/JSON file, or a folder whose C{*.yaml}, C{*.yml} and
        C{*.json} files are read in name order (not recursively; names
        starting with "." are skipped).
    @ivar sink: the L{keda_proxy.interfaces.IStateSink} to feed.
    @ivar clock: an C{IReactorTime} driving the change poll.
    @ivar interval: seconds between polls.
    @ivar last_error: the last syntax/read error line, or L{None} once a
        read has applied.
    """

    path: str = field(converter=os.fspath)
    sink: Any
    clock: Any
    interval: float = 1.0
    log: Logger = field(factory=lambda: Logger(namespace=__name__))
    last_error: str | None = field(default=None, init=False)
    _signature: Any = field(default=None, init=False)
    _loop: LoopingCall | None = field(default=None, init=False)

    #: Every kind is replaced on every good read, so /readyz waits for all.
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
        # Read synchronously so the first snapshot exists before any
        # request can arrive.
        self.poll()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    # -- polling ----------------------------------------------------------

    def poll(self) -> bool:
        """Re-read if the files changed; return whether a new state applied.

        Never raises: it runs in a LoopingCall, which an exception would stop.
        """
        try:
            return self._poll()
        except Exception:  # noqa: BLE001 -- logged with traceback; keep polling
            self.log.failure("unexpected error reading manifests from {path}", path=self.path)
            return False

    def _poll(self) -> bool:
        try:
            files, signature = self._scan()
        except OSError as e:
            if self._signature is not _MISSING:
                self._signature = _MISSING
                self.log.error(
                    "manifest path {path} is unavailable ({reason}); "
                    "keeping the last good state",
                    path=self.path, reason=e.strerror or str(e))
            return False
        if signature == self._signature:
            return False
        self._signature = signature
        return self._reload(files)

    def _scan(self) -> tuple[list[str], tuple]:
        """The files to read and a signature that changes when they do."""
        if os.path.isdir(self.path):
            names = sorted(
                n for n in os.listdir(self.path)
                if n.endswith(MANIFEST_SUFFIXES) and not n.startswith("."))
            candidates = [os.path.join(self.path, n) for n in names]
        else:
            os.stat(self.path)  # raises if it vanished
            candidates = [self.path]
        files, signature = [], []
        for path in candidates:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # deleted between listing and stat; it is gone
            if os.path.isdir(path):
                continue
            files.append(path)
            signature.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        return files, tuple(signature)

    # -- reading ----------------------------------------------------------

    def _reload(self, files: list[str]) -> bool:
        documents = []
        for path in files:
            try:
                documents.extend((path, i, doc) for i, doc in enumerate(_load(path), 1))
            except _LoadError as e:
                self.last_error = str(e)
                self.log.error("{error}; nothing applied, keeping the last good state",
                               error=str(e))
                return False

        by_kind: dict[str, dict[str, Any]] = {k: {} for k in ALL_KINDS}
        origin: dict[tuple[str, str], str] = {}
        skipped = 0
        for path, index, doc in documents:
            if doc is None:  # an empty document, e.g. a trailing "---"
                continue
            where = f"{path} document {index}"
            for obj in expand_lists(doc):
                try:
                    parsed = parse_object(obj)
                except InvalidResource as e:
                    skipped += 1
                    self.log.warn("{where}: skipping invalid {error}", where=where, error=str(e))
                    continue
                if parsed is None:
                    self._maybe_warn_ignored(where, obj)
                    continue
                previous = origin.get((parsed.kind, parsed.key))
                if previous is not None:
                    self.log.warn("{where}: {kind} {key} is also defined in {previous}; "
                                  "the later one wins", where=where, kind=parsed.kind,
                                  key=parsed.key, previous=previous)
                origin[(parsed.kind, parsed.key)] = where
                by_kind[parsed.kind][parsed.key] = parsed.value

        for kind in ALL_KINDS:
            self.sink.replace(kind, by_kind[kind])
        self.last_error = None
        self.log.info(
            "loaded {count} file(s) from {path}: {counts}; {skipped} invalid skipped",
            count=len(files), path=self.path, skipped=skipped,
            counts=", ".join(f"{len(by_kind[k])} {k}" for k in ALL_KINDS))
        return True

    def _maybe_warn_ignored(self, where: str, obj: Any) -> None:
        """Warn about a likely typo (our kind with a wrong apiVersion, say).

        Deployments and other kinds next to the routes are normal and stay
        quiet; so do ConfigMaps without the response-body label.
        """
        if not isinstance(obj, dict):
            return
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if (api_version, kind) in SUPPORTED_TYPES:
            return
        ours = {k for _, k in SUPPORTED_TYPES}
        if kind in ours or (isinstance(api_version, str)
                            and api_version.startswith("http.keda.sh/")):
            expected = sorted(f"{a} {k}" for a, k in SUPPORTED_TYPES)
            self.log.warn("{where}: ignoring {kind!r} with apiVersion {api_version!r}; "
                          "expected one of: {expected}", where=where, kind=kind,
                          api_version=api_version, expected=", ".join(expected))


def _load(path: str) -> list:
    """Every document of one file, or L{_LoadError} with a one-line reason."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise _LoadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise _LoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if path.endswith(".json"):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as e:
            raise _LoadError(f"{path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None
    try:
        return list(yaml.safe_load_all(text))
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
