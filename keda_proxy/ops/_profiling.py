"""
The profiling endpoint on ``PROFILING_BIND_ADDRESS``, at Go's pprof paths
so that an operator's habits carry over:

 - ``/debug/pprof/profile?seconds=N``: a CPU profile of the running
   process, every thread's Python stack sampled L{SAMPLE_HZ} times a second
   for N seconds (1 to L{MAX_SECONDS}, 30 by default as in Go), as a
   gzipped pprof ``profile.proto`` that ``go tool pprof`` opens, or with
   ``format=collapsed`` as collapsed stacks for flame graphs;
 - ``/debug/pprof/heap``: a heap summary as text (tracemalloc's largest
   allocation sites when tracemalloc is on, else the garbage collector's
   objects counted by type, and the resident memory);
 - ``/debug/pprof/goroutine``: every thread's stack, the reactor's
   included: as text with ``debug=1`` (grouped) or ``debug=2`` (each
   thread), else as a pprof profile;
 - ``/debug/pprof/cmdline`` and the ``/debug/pprof/`` index.

Sampling, counting and encoding run in a thread of their own; the reactor
only starts it and writes the finished answer, so requests keep flowing
while a profile is taken.  Sampling reads C{sys._current_frames()}, which
holds the GIL for some tens of microseconds per thread and sample.

A sample's CPU time is what the thread's own CPU clock advanced since the
previous sample (Linux's per-thread clock, read by the thread's id): a
thread that sat waiting (the reactor in epoll, an idle pool thread)
advanced nothing and is not counted, so the profile shows where CPU time
went, as Go's does, rather than where threads wait.
"""

from __future__ import annotations

import gc
import gzip
import html
import os
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from keda_proxy.ops._adminsite import AdminSite
from keda_proxy.ops._metrics import NotFound, plain_text

log = Logger()

#: Samples per second of a CPU profile (Go's rate).
SAMPLE_HZ = 100
#: Longest CPU profile, in seconds; longer asks get 400.
MAX_SECONDS = 60
#: A CPU profile's length when C{seconds} is missing or not above 0 (Go's).
DEFAULT_SECONDS = 30
#: How long a sample lets go of the GIL to tell running threads from
#: waiting ones (see L{CPUSampler._charge}).
PROBE = 0.001
#: The interpreter's switch interval while a CPU profile is taken.
SWITCH_INTERVAL = 0.0005
#: Frames kept of a stack, from the innermost.
MAX_DEPTH = 128
#: Allocation sites or types listed in a heap summary, by default.
HEAP_TOP = 50


# -- a minimal protocol buffers writer ---------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 as two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int_field(field: int, n: int) -> bytes:
    """A varint field; 0 is proto3's default and left out."""
    return _varint(field << 3) + _varint(n) if n else b""


def _bytes_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _packed_field(field: int, values) -> bytes:
    return _bytes_field(field, b"".join(_varint(v) for v in values)) if values else b""


class PprofProfile:
    """A pprof profile (github.com/google/pprof, proto/profile.proto) of
    Python stacks: one function per code object, one location per code
    object and line, one mapping standing for the interpreter (its
    functions and lines already known, so pprof symbolizes nothing).

    @param sample_types: the (type, unit) of each value of a sample
    """

    def __init__(self, sample_types, period_type=None, period: int = 0,
                 time_nanos: int = 0, duration_nanos: int = 0, comments=()):
        self._strings = {"": 0}
        self.sample_types = [tuple(map(self.string, t)) for t in sample_types]
        self.period_type = tuple(map(self.string, period_type)) if period_type else None
        self.period = period
        self.time_nanos = time_nanos
        self.duration_nanos = duration_nanos
        self.comments = [self.string(c) for c in comments]
        self._functions = {}  # code -> (id, name, system name, file, start line)
        self._locations = {}  # (code, line) -> (id, function id, line)
        self._samples = []  # (location ids, values, ((key, str), ...))
        self._mapping_file = self.string(os.path.basename(sys.executable) or "python")

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self._strings)
        return index

    def location(self, code, line: int, name: str) -> int:
        """The id of C{code}'s location at C{line} (C{name}: its function's
        full name, used the first time C{code} is seen)."""
        key = (code, line)
        found = self._locations.get(key)
        if found is not None:
            return found[0]
        function = self._functions.get(code)
        if function is None:
            function = self._functions[code] = (
                len(self._functions) + 1, self.string(name), self.string(code.co_name),
                self.string(code.co_filename), code.co_firstlineno)
        location_id = len(self._locations) + 1
        self._locations[key] = (location_id, function[0], line)
        return location_id

    def add(self, location_ids, values, labels=()) -> None:
        """A sample: its stack (innermost first), values and string labels."""
        self._samples.append((
            list(location_ids), list(values),
            tuple((self.string(k), self.string(v)) for k, v in labels)))

    def encode(self) -> bytes:
        """The serialized C{Profile} message (not compressed)."""
        out = bytearray()
        for kind, unit in self.sample_types:
            out += _bytes_field(1, _int_field(1, kind) + _int_field(2, unit))
        for location_ids, values, labels in self._samples:
            body = _packed_field(1, location_ids) + _packed_field(2, values)
            for key, text in labels:
                body += _bytes_field(3, _int_field(1, key) + _int_field(2, text))
            out += _bytes_field(2, body)
        out += _bytes_field(3, _int_field(1, 1) + _int_field(5, self._mapping_file)
                            + _int_field(7, 1) + _int_field(8, 1) + _int_field(9, 1))
        for location_id, function_id, line in self._locations.values():
            out += _bytes_field(4, _int_field(1, location_id) + _int_field(2, 1)
                                + _bytes_field(4, _int_field(1, function_id)
                                               + _int_field(2, line)))
        for function_id, name, system_name, filename, start in self._functions.values():
            out += _bytes_field(5, _int_field(1, function_id) + _int_field(2, name)
                                + _int_field(3, system_name) + _int_field(4, filename)
                                + _int_field(5, start))
        for text in self._strings:  # in index order: dicts keep insertion order
            out += _bytes_field(6, text.encode("utf-8", "replace"))
        out += _int_field(9, self.time_nanos) + _int_field(10, self.duration_nanos)
        if self.period_type is not None:
            kind, unit = self.period_type
            out += _bytes_field(11, _int_field(1, kind) + _int_field(2, unit))
        out += _int_field(12, self.period)
        out += _packed_field(13, self.comments)
        return bytes(out)

    def gzipped(self) -> bytes:
        return gzip.compress(self.encode(), compresslevel=6)


# -- stacks ------------------------------------------------------------------


def _function_name(frame) -> str:
    """``module.Qualified.name``, as pprof shows Go's ``package.Func``."""
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    module = frame.f_globals.get("__name__")
    return f"{module}.{name}" if module else name


def _stack(frame, names: dict) -> tuple:
    """C{frame}'s stack as ((code, line), ...), innermost first, at most
    L{MAX_DEPTH} frames; C{names} gathers each code object's full name."""
    stack = []
    while frame is not None and len(stack) < MAX_DEPTH:
        code = frame.f_code
        if code not in names:
            names[code] = _function_name(frame)
        stack.append((code, frame.f_lineno or 0))
        frame = frame.f_back
    return tuple(stack)


def _thread_cpu_ns(native_id: Optional[int]) -> Optional[int]:
    """The CPU time of the thread with kernel id C{native_id}: Linux's
    per-thread CPU clock, named by the thread id as glibc names it (no
    pthread handle, so a thread that has just ended gives an error, never
    a crash); None where that is not to be had."""
    if native_id is None or not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime_ns((~native_id << 3) | 6)
    except (OSError, OverflowError):
        return None


def _thread_names(reactor_ident: Optional[int]) -> dict:
    """ident -> (name, native id, daemon), the reactor's name marked."""
    out = {}
    for t in threading.enumerate():
        name = t.name + (" (reactor)" if t.ident == reactor_ident else "")
        out[t.ident] = (name, getattr(t, "native_id", None), t.daemon)
    return out


class CPUSampler:
    """Samples every other thread's stack L{SAMPLE_HZ} times a second for
    C{seconds}, or until C{stop} is set; L{run} is called in a thread of
    its own and returns the counts."""

    def __init__(self, seconds: float, reactor_ident: Optional[int] = None,
                 hz: int = SAMPLE_HZ):
        self.seconds = seconds
        self.hz = hz
        self.reactor_ident = reactor_ident
        self.stop = threading.Event()
        #: code -> full function name
        self.names = {}
        #: (thread name, stack) -> [samples, CPU nanoseconds]
        self.counts = {}
        self.started_ns = 0
        self.duration_ns = 0

    def run(self) -> "CPUSampler":
        # a thread running Python code lets go of the GIL when another asks
        # for it only after the switch interval (5 ms by default): shortened
        # while sampling, samples are taken when due, not when threads wait
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            return self._run()
        finally:
            sys.setswitchinterval(interval)

    def _run(self) -> "CPUSampler":
        me = threading.get_ident()
        period = 1.0 / self.hz
        period_ns = int(1e9 / self.hz)
        self.started_ns = time.time_ns()
        start = time.monotonic()
        deadline = start + self.seconds
        last = {}  # ident -> CPU time at the previous sample
        running_at = {}  # ident -> (stack, sample number) when last seen running
        for ident, (_, native_id, _) in _thread_names(self.reactor_ident).items():
            last[ident] = _thread_cpu_ns(native_id)
        tick, number = start, 0
        jitter = random.Random()
        while True:
            # at random intervals averaging the period, so that work that
            # recurs at the same rate is not always met in the same phase
            tick += period * jitter.uniform(0.5, 1.5)
            number += 1
            if tick > deadline:
                self.stop.wait(max(0.0, deadline - time.monotonic()))
                break
            if self.stop.wait(max(0.0, tick - time.monotonic())):
                break
            threads = _thread_names(self.reactor_ident)
            frames = sys._current_frames()
            busy = []  # threads whose CPU clock advanced since the previous sample
            for ident, frame in frames.items():
                if ident == me:
                    continue
                name, native_id, _ = threads.get(ident, (f"thread {ident}", None, True))
                cpu = _thread_cpu_ns(native_id)
                if cpu is None:
                    used = period_ns  # no clock: count the sample as running
                else:
                    before = last.get(ident)
                    last[ident] = cpu
                    if before is None or cpu <= before:
                        continue  # new, or waiting all along
                    used = cpu - before
                busy.append((ident, name, native_id, cpu, used, _stack(frame, self.names)))
            frames = frame = None  # no frame outlives its sample
            self._charge(busy, running_at, number)
        self.duration_ns = int((time.monotonic() - start) * 1e9)
        return self

    def _charge(self, busy: list, running_at: dict, number: int) -> None:
        """Charge each busy thread's CPU time to a stack.  A thread still
        running (its clock advances while this thread lets go of the GIL for
        L{PROBE} seconds) is charged at the stack it is in.  One that has
        stopped (waiting in epoll, on a lock, on a socket) used that time
        before the stack seen now: it is charged at the stack it was last
        seen running in, if one of the two previous samples saw it, else at
        the stack it waits in."""
        if any(native_id is not None for _, _, native_id, _, _, _ in busy):
            time.sleep(PROBE)
        for ident, name, native_id, cpu, used, stack in busy:
            now = _thread_cpu_ns(native_id)
            if now is None or cpu is None or now > cpu:
                running_at[ident] = (stack, number)
            else:
                seen = running_at.get(ident)
                if seen is not None and number - seen[1] <= 2:
                    stack = seen[0]
            key = (name, stack)
            cell = self.counts.get(key)
            if cell is None:
                self.counts[key] = [1, used]
            else:
                cell[0] += 1
                cell[1] += used

    def profile(self) -> PprofProfile:
        p = PprofProfile(
            [("samples", "count"), ("cpu", "nanoseconds")],
            period_type=("cpu", "nanoseconds"), period=int(1e9 / self.hz),
            time_nanos=self.started_ns, duration_nanos=self.duration_ns,
            comments=[f"keda-interceptor: Python stacks of every thread sampled at "
                      f"{self.hz} Hz, weighted by each thread's CPU time"])
        for (thread, stack), (samples, cpu) in self.counts.items():
            ids = [p.location(code, line, self.names[code]) for code, line in stack]
            p.add(ids, (samples, cpu), labels=[("thread", thread)])
        return p

    def collapsed(self) -> bytes:
        """``thread;outermost;...;innermost weight`` lines, the weight in
        CPU microseconds (Brendan Gregg's format, for flamegraph.pl and
        speedscope)."""
        lines = []
        for (thread, stack), (_, cpu) in sorted(self.counts.items(),
                                                key=lambda item: -item[1][1]):
            weight = max(1, cpu // 1000)
            frames = [_collapsed_frame(self.names[code], code, line)
                      for code, line in reversed(stack)]
            lines.append(";".join([_clean(thread)] + frames) + f" {weight}")
        return ("\n".join(lines) + "\n").encode("utf-8", "replace") if lines else b""


def _clean(text: str) -> str:
    return text.replace(";", ":").replace("\n", " ")


def _collapsed_frame(name: str, code, line: int) -> str:
    return _clean(f"{name} ({code.co_filename}:{line})")


# -- the thread dump ("goroutine") ---------------------------------------------


def thread_dump(reactor_ident: Optional[int], grouped: bool = False) -> bytes:
    """Every thread's stack as text, outermost call first (as Python's
    tracebacks are): each thread (C{grouped}: each distinct stack once,
    with the threads that share it)."""
    threads = _thread_names(reactor_ident)
    frames = sys._current_frames()
    entries = []
    for ident, frame in frames.items():
        name, native_id, daemon = threads.get(ident, (f"thread {ident}", None, True))
        entries.append((ident, name, native_id, daemon, traceback.format_stack(frame)))
    del frames
    # the reactor first, then by name
    entries.sort(key=lambda e: (e[0] != reactor_ident, e[1]))
    out = [f"{len(entries)} threads in process {os.getpid()}\n\n"]
    if grouped:
        groups = {}
        for _, name, _, _, stack in entries:
            groups.setdefault(tuple(stack), []).append(name)
        for stack, names in groups.items():
            out.append(f"{len(names)} thread(s): {', '.join(names)}\n")
            out.append("Stack (most recent call last):\n")
            out.extend(stack)
            out.append("\n")
    else:
        for ident, name, native_id, daemon, stack in entries:
            extra = [f"ident {ident}"]
            if native_id is not None:
                extra.append(f"native id {native_id}")
            if daemon:
                extra.append("daemon")
            out.append(f"thread {name!r} [{', '.join(extra)}]:\n")
            out.append("Stack (most recent call last):\n")
            out.extend(stack)
            out.append("\n")
    return "".join(out).encode("utf-8", "replace")


def thread_profile(reactor_ident: Optional[int]) -> PprofProfile:
    """Go's goroutine profile for Python threads: one sample of count 1
    per thread, labelled with its name."""
    p = PprofProfile([("goroutine", "count")], period_type=("goroutine", "count"),
                     period=1, time_nanos=time.time_ns())
    threads = _thread_names(reactor_ident)
    names = {}
    frames = sys._current_frames()
    for ident, frame in frames.items():
        name = threads.get(ident, (f"thread {ident}",))[0]
        stack = _stack(frame, names)
        p.add([p.location(code, line, names[code]) for code, line in stack], [1],
              labels=[("thread", name)])
    del frames
    return p


# -- the heap summary --------------------------------------------------------


def _memory_lines() -> list:
    lines = []
    try:
        with open("/proc/self/statm", "rb") as f:
            size, resident = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        lines.append(f"resident memory (RSS): {_size(resident * page)}")
        lines.append(f"virtual memory: {_size(size * page)}")
    except (OSError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        lines.append(f"peak resident memory (RSS, /proc not readable): {_size(peak)}")
    return lines


def _size(n: int) -> str:
    return f"{int(n)} B ({n / 1048576:.1f} MiB)"


def heap_summary(top: int = HEAP_TOP) -> bytes:
    """What the heap holds, as text: with tracemalloc on, its C{top}
    largest allocation sites (by traceback); otherwise the objects the
    garbage collector tracks, counted by type.  Either way the resident
    memory and the collector's state come first."""
    import tracemalloc

    out = []
    tracing = tracemalloc.is_tracing()
    if tracing:
        out.append(f"heap summary: tracemalloc, the {top} largest allocation sites "
                   f"(tracebacks of up to {tracemalloc.get_traceback_limit()} frames)")
    else:
        out.append(f"heap summary: gc-tracked objects by type, the {top} most numerous "
                   "(tracemalloc is off; start the interceptor with PYTHONTRACEMALLOC=25 "
                   "for allocation sites)")
    out.append("")
    out.extend(_memory_lines())
    counts = gc.get_count()
    out.append(f"gc: thresholds {gc.get_threshold()}, pending {counts}, "
               f"frozen objects {gc.get_freeze_count()}, "
               f"collections {[s['collections'] for s in gc.get_stats()]}")
    out.append("")
    if tracing:
        current, peak = tracemalloc.get_traced_memory()
        out.append(f"traced: {_size(current)} now, {_size(peak)} at peak, "
                   f"tracemalloc's own overhead {_size(tracemalloc.get_tracemalloc_memory())}")
        out.append("")
        snapshot = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__)])
        for i, stat in enumerate(snapshot.statistics("traceback")[:top], 1):
            out.append(f"#{i}: {_size(stat.size)} in {stat.count} blocks "
                       f"(average {stat.size // max(1, stat.count)} B)")
            out.extend(stat.traceback.format(most_recent_first=False))
            out.append("")
    else:
        objects = gc.get_objects()
        by_type = Counter(map(type, objects))
        total = len(objects)
        del objects
        out.append(f"{total} objects tracked by the garbage collector, besides the "
                   f"{gc.get_freeze_count()} frozen at start-up; strings, bytes and numbers "
                   "are not tracked, so not counted")
        out.append("")
        out.append(f"{'count':>10}  type")
        for kind, count in by_type.most_common(top):
            module = getattr(kind, "__module__", "builtins")
            name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
            out.append(f"{count:>10}  {name}")
    return ("\n".join(out) + "\n").encode("utf-8", "replace")


# -- the HTTP side -----------------------------------------------------------


def in_thread(reactor, name: str, work: Callable, *args) -> Deferred:
    """Run C{work(*args)} in a new daemon thread named C{name}; the result
    (or failure) arrives on the reactor thread."""
    d = Deferred()

    def run():
        try:
            result = work(*args)
        except BaseException:  # noqa: BLE001 - handed to the reactor
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return d


def _pprof_error(request, code: int, text: str) -> bytes:
    """Go's C{serveError}: plain text, and the ``X-Go-Pprof`` header that
    tells ``go tool pprof`` to show the text."""
    plain_text(request, code)
    request.setHeader(b"x-go-pprof", b"1")
    request.responseHeaders.removeHeader(b"content-disposition")
    return text.encode("utf-8") + b"\n"


def _arg(request, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _int_arg(request, name: str) -> Optional[int]:
    """Go's C{strconv.Atoi(r.FormValue(name))}: None when absent or not a
    whole number."""
    text = _arg(request, name)
    if text is None or not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    return int(text)


def _octet_stream(request, filename: str) -> None:
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-disposition",
                      b'attachment; filename="%s"' % filename.encode("ascii"))


class _Deferred(Resource):
    """Answers when a Deferred fires, unless the client went away."""

    isLeaf = True

    def _answer(self, request, d: Deferred, write: Callable) -> object:
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(result):
            if not gone:
                request.write(write(request, result))
                request.finish()

        def failed(failure):
            log.failure("profiling request failed", failure)
            if not gone:
                request.write(_pprof_error(request, 500, f"profiling failed: "
                                                         f"{failure.getErrorMessage()}"))
                request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class CPUProfileResource(_Deferred):
    """``/debug/pprof/profile?seconds=N``; one profile at a time, as Go."""

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.busy = False

    def render_GET(self, request):
        seconds = _int_arg(request, "seconds")
        if seconds is None or seconds <= 0:
            seconds = DEFAULT_SECONDS
        if seconds > MAX_SECONDS:
            return _pprof_error(request, 400, f"profile duration exceeds the server's "
                                              f"limit of {MAX_SECONDS} seconds")
        collapsed = _arg(request, "format") == "collapsed"
        if self.busy:
            return _pprof_error(request, 500, "Could not enable CPU profiling: "
                                              "cpu profiling already in use")
        sampler = CPUSampler(seconds, reactor_ident=threading.get_ident())
        # a client that goes away ends the sampling early
        request.notifyFinish().addErrback(lambda _: sampler.stop.set())

        def work():
            sampler.run()
            return sampler.collapsed() if collapsed else sampler.profile().gzipped()

        def release(result):
            self.busy = False
            return result

        d = in_thread(self.reactor, "pprof-cpu-profile", work)
        self.busy = True
        d.addBoth(release)

        def write(request, body):
            if collapsed:
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            else:
                _octet_stream(request, "profile")
            return body

        return self._answer(request, d, write)


class HeapResource(_Deferred):
    """``/debug/pprof/heap``: L{heap_summary}, built off the reactor."""

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor

    def render_GET(self, request):
        top = _int_arg(request, "top")
        top = HEAP_TOP if top is None else min(max(top, 1), 10_000)
        d = in_thread(self.reactor, "pprof-heap", heap_summary, top)

        def write(request, body):
            plain_text(request)
            return body

        return self._answer(request, d, write)


class ThreadsResource(Resource):
    """``/debug/pprof/goroutine``: text with ``debug=1`` (grouped) or
    ``debug=2`` (every thread), else a pprof profile."""

    isLeaf = True

    def render_GET(self, request):
        debug = _int_arg(request, "debug") or 0
        reactor_ident = threading.get_ident()  # requests are served on the reactor
        if debug > 0:
            plain_text(request)
            return thread_dump(reactor_ident, grouped=debug == 1)
        _octet_stream(request, "goroutine")
        return thread_profile(reactor_ident).gzipped()


class CmdlineResource(Resource):
    """``/debug/pprof/cmdline``: the command line, NUL-separated, as Go."""

    isLeaf = True

    def render_GET(self, request):
        plain_text(request)
        return "\0".join([sys.executable] + sys.argv).encode("utf-8", "replace")


_PROFILES = (
    ("profile", "profile?seconds=30",
     f"CPU profile: every thread's Python stack sampled at {SAMPLE_HZ} Hz, weighted by "
     f"CPU time; seconds=1..{MAX_SECONDS} (30 by default). A gzipped pprof profile "
     "for go tool pprof; format=collapsed gives collapsed stacks for flame graphs."),
    ("heap", "heap",
     "Heap summary: tracemalloc's largest allocation sites when tracemalloc is on "
     "(PYTHONTRACEMALLOC), else gc-tracked objects by type; resident memory. Text."),
    ("goroutine", "goroutine?debug=1",
     "Stacks of all threads, the reactor's included: debug=1 grouped, debug=2 each "
     "thread, no debug a pprof profile."),
    ("cmdline", "cmdline", "The command line of this process."),
)


class IndexResource(Resource):
    """``/debug/pprof/`` lists the profiles; any other name is Go's
    ``Unknown profile``."""

    def __init__(self, reactor):
        super().__init__()
        self.putChild(b"profile", CPUProfileResource(reactor))
        self.putChild(b"heap", HeapResource(reactor))
        self.putChild(b"goroutine", ThreadsResource())
        self.putChild(b"cmdline", CmdlineResource())
        self.unknown = NotFound(b"Unknown profile\n")

    def getChild(self, path, request):
        if path == b"":
            return self
        return self.unknown

    def render_GET(self, request):
        rows = "".join(
            f"<li><a href='{html.escape(link)}'>{html.escape(name)}</a>: "
            f"{html.escape(text)}</li>\n" for name, link, text in _PROFILES)
        page = (
            "<html>\n<head>\n<title>/debug/pprof/</title>\n</head>\n<body>\n"
            "/debug/pprof/\n<p>keda-interceptor (Python): profiles of this process.</p>\n"
            f"<ul>\n{rows}</ul>\n"
            "<p><a href='goroutine?debug=2'>full thread stack dump</a></p>\n"
            "</body>\n</html>\n")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return page.encode("utf-8")


class _Redirect(Resource):
    """``/debug/pprof`` -> ``/debug/pprof/``, as Go's ServeMux redirects."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(301)
        request.setHeader(b"location", b"/debug/pprof/")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return b'<a href="/debug/pprof/">Moved Permanently</a>.\n\n'


class _Root(Resource):
    """Only ``/debug/pprof...`` exists; any other path is a 404."""

    def __init__(self, reactor):
        super().__init__()
        self.index = IndexResource(reactor)
        self.not_found = NotFound()

    def getChild(self, path, request):
        if path == b"debug" and request.postpath[:1] == [b"pprof"]:
            request.prepath.append(request.postpath.pop(0))
            return self.index if request.postpath else _Redirect()
        return self.not_found

    def render(self, request):
        return self.not_found.render(request)


def profiling_site(reactor) -> AdminSite:
    """The Site behind ``PROFILING_BIND_ADDRESS``: GET and HEAD only, no
    request bodies, bounded heads, as the admin port."""
    return AdminSite(_Root(reactor), reactor=reactor)
