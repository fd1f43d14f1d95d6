"""
Logs in the Go interceptor's shape: controller-runtime's zap flags, and a
C{twisted.logger} observer that writes zap's JSON or console lines.

The KEDA HTTP add-on chart starts the interceptor with C{--zap-log-level},
C{--zap-encoder}, C{--zap-time-encoding} and (with stack traces on)
C{--zap-stacktrace-level}; controller-runtime also binds C{--zap-devel}.
The values are read as controller-runtime reads them (case-insensitively;
a log level may also be an integer N > 0, debug verbosity N).  The Go
interceptor turns development mode on in code, so the defaults of the flags
not given are development mode's (console encoder, debug level, stack traces
from warn), unless C{--zap-devel=false} asks for production mode's (JSON,
info, error).  Without any zap flag, twistd's own log observer is kept.

Each event becomes one line: C{level}, C{ts}, C{logger}, C{msg}, then the
event's own JSON-serializable fields, then C{stacktrace} when the event
carries a failure at or above the stack trace level.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime
from typing import Any, Optional, TextIO

from attrs import frozen
from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from zope.interface import implementer

from keda_proxy.ops._config import _quote

# zap's level numbers
DEBUG, INFO, WARN, ERROR, PANIC = -1, 0, 1, 2, 4

#: --zap-log-level names (controller-runtime's; no "warn")
LOG_LEVELS = {"debug": DEBUG, "info": INFO, "error": ERROR, "panic": PANIC}
#: --zap-stacktrace-level names
STACKTRACE_LEVELS = {"info": INFO, "error": ERROR, "panic": PANIC}
ENCODERS = ("json", "console")
#: --zap-time-encoding values; "nanos" is controller-runtime's spelling of
#: "nano" (the spelling of its help text and of the chart's values.yaml)
TIME_ENCODINGS = ("epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano")
_TIME_ALIASES = {"nanos": "nano"}

#: the zap flags, as dictionary keys of the twistd plugin's options
FLAGS = ("zap-devel", "zap-encoder", "zap-log-level", "zap-stacktrace-level",
         "zap-time-encoding")

_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class ZapFlagError(ValueError):
    """An invalid zap flag value; C{str()} is one line naming both."""

    def __init__(self, flag: str, value: str, reason: str) -> None:
        super().__init__(flag, value, reason)
        self.flag = flag
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid value for --{self.flag}: {_quote(self.value)} ({self.reason})"


def parse_log_level(text: str) -> int:
    """A zap level number: a name, or -N for an integer N > 0."""
    level = LOG_LEVELS.get(text.lower())
    if level is not None:
        return level
    if _INT.fullmatch(text) and int(text) > 0:
        return -int(text)
    raise ZapFlagError("zap-log-level", text,
                       "expected debug, info, error, panic or an integer above 0")


def parse_stacktrace_level(text: str) -> int:
    level = STACKTRACE_LEVELS.get(text.lower())
    if level is None:
        raise ZapFlagError("zap-stacktrace-level", text, "expected info, error or panic")
    return level


def parse_encoder(text: str) -> str:
    if text.lower() not in ENCODERS:
        raise ZapFlagError("zap-encoder", text, "expected json or console")
    return text.lower()


def parse_time_encoding(text: str) -> str:
    name = _TIME_ALIASES.get(text.lower(), text.lower())
    if name not in TIME_ENCODINGS:
        raise ZapFlagError("zap-time-encoding", text,
                           "expected epoch, millis, nano, iso8601, rfc3339 or rfc3339nano")
    return name


def parse_bool(text: str) -> bool:
    """A boolean as Go's C{strconv.ParseBool} reads it."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ZapFlagError("zap-devel", text, 'expected a boolean such as "true" or "false"')


class ZapFlagOptions:
    """The zap flags, for a L{twisted.python.usage.Options} subclass (list
    it before C{usage.Options}).  Each parsed value is kept under its flag's
    name, None when not given; an invalid one raises L{ZapFlagError}.

    Both C{--flag=value} and C{--flag value} work, as do Go's single-dash
    C{-zap-...} spellings; C{--zap-devel} is a flag that also takes
    C{--zap-devel=false} (Go's boolean syntax)."""

    def __init__(self):
        super().__init__()
        for flag in FLAGS:
            self[flag] = None
        self._devel_values = []

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        args = []
        rest = iter(options)
        for arg in rest:
            if arg == "--":
                args.append(arg)
                args.extend(rest)
                break
            if arg.startswith("-zap-"):
                arg = "-" + arg
            if arg == "--zap-devel":
                self._devel_values.append(True)
            elif arg.startswith("--zap-devel="):
                self._devel_values.append(parse_bool(arg.partition("=")[2]))
                arg = "--zap-devel"
            args.append(arg)
        super().parseOptions(args)

    def opt_zap_devel(self):
        """Development mode defaults (console encoder, debug level, stack
        traces from warn), on unless --zap-devel=false (production mode:
        json, info, error)."""
        self["zap-devel"] = self._devel_values.pop(0) if self._devel_values else True

    def opt_zap_encoder(self, value):
        """Log encoding: json or console."""
        self["zap-encoder"] = parse_encoder(value)

    def opt_zap_log_level(self, value):
        """Log level: debug, info, error, panic, or an integer N > 0 for
        debug verbosity N."""
        self["zap-log-level"] = parse_log_level(value)

    def opt_zap_stacktrace_level(self, value):
        """Level from which a logged failure's traceback is written: info,
        error or panic."""
        self["zap-stacktrace-level"] = parse_stacktrace_level(value)

    def opt_zap_time_encoding(self, value):
        """Timestamp format: epoch, millis, nano, iso8601, rfc3339 or
        rfc3339nano."""
        self["zap-time-encoding"] = parse_time_encoding(value)


@frozen
class ZapConfig:
    """The effective settings (development mode's defaults)."""

    encoder: str = "console"
    level: int = DEBUG
    stacktrace_level: int = WARN
    time_encoding: str = "rfc3339"

    @classmethod
    def from_flags(cls, development: Optional[bool] = None, encoder: Optional[str] = None,
                   level: Optional[int] = None, stacktrace_level: Optional[int] = None,
                   time_encoding: Optional[str] = None) -> "ZapConfig":
        """As controller-runtime fills in what is not given, with the Go
        interceptor's C{Development: true} as the default mode."""
        devel = development is None or development
        return cls(
            encoder=encoder or ("console" if devel else "json"),
            level=level if level is not None else (DEBUG if devel else INFO),
            stacktrace_level=(stacktrace_level if stacktrace_level is not None
                              else (WARN if devel else ERROR)),
            time_encoding=time_encoding or "rfc3339",
        )


def config_from_options(options) -> Optional[ZapConfig]:
    """The zap settings from the plugin's options; None when no zap flag
    was given (twistd's own logging stays)."""
    values = [options.get(flag) for flag in FLAGS]
    if all(v is None for v in values):
        return None
    devel, encoder, level, stacktrace_level, time_encoding = values
    return ZapConfig.from_flags(devel, encoder, level, stacktrace_level, time_encoding)


# -- the observer -------------------------------------------------------

#: twisted level -> (JSON name, console name, zap number)
_LEVELS = {
    LogLevel.debug: ("debug", "DEBUG", DEBUG),
    LogLevel.info: ("info", "INFO", INFO),
    LogLevel.warn: ("warn", "WARN", WARN),
    LogLevel.error: ("error", "ERROR", ERROR),
    LogLevel.critical: ("error", "ERROR", ERROR),
}

#: keys of twisted.python.log's legacy events, not fields
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "printed",
                          "why", "failure", "logLevel"})
#: the line's own keys: an event field of the same name is left out
_RESERVED = frozenset({"level", "ts", "logger", "msg", "stacktrace"})
_SKIP = object()


def _fraction_and_zone(dt: datetime, digits: int, trim: bool, colon: bool) -> str:
    micros = dt.microsecond
    if digits == 3:
        fraction = f".{micros // 1000:03d}"
    elif digits == 0:
        fraction = ""
    else:
        fraction = f".{micros:06d}"
    if trim:
        fraction = fraction.rstrip("0").rstrip(".")
    offset = dt.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    if minutes == 0:
        zone = "Z"
    else:
        sign = "+" if minutes > 0 else "-"
        hours, mins = divmod(abs(minutes), 60)
        zone = f"{sign}{hours:02d}:{mins:02d}" if colon else f"{sign}{hours:02d}{mins:02d}"
    return fraction + zone


def encode_time(seconds: float, encoding: str, tz=None):
    """C{seconds} since the epoch as zap's time encoder C{encoding} writes
    it: a number for epoch (seconds), millis and nano, else a string in the
    local time zone (or C{tz}).  Microseconds are the precision kept: a
    float of today's epoch seconds holds no more."""
    micros = round(seconds * 1_000_000)
    if encoding == "epoch":
        return micros / 1_000_000
    if encoding == "millis":
        return micros / 1_000
    if encoding == "nano":
        return micros * 1_000
    whole, part = divmod(micros, 1_000_000)
    dt = (datetime.fromtimestamp(whole, tz) if tz is not None
          else datetime.fromtimestamp(whole).astimezone()).replace(microsecond=part)
    stamp = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if encoding == "iso8601":  # 2006-01-02T15:04:05.000Z0700
        return stamp + _fraction_and_zone(dt, 3, False, False)
    if encoding == "rfc3339":  # 2006-01-02T15:04:05Z07:00
        return stamp + _fraction_and_zone(dt, 0, False, True)
    if encoding == "rfc3339nano":  # 2006-01-02T15:04:05.999999999Z07:00
        return stamp + _fraction_and_zone(dt, 6, True, True)
    raise ValueError(f"unknown time encoding {encoding!r}")


def _jsonable(value: Any):
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _SKIP
    return value


def logger_name(event) -> str:
    """C{keda_proxy.state._manifests} -> C{manifests}; Twisted's own events
    (C{twisted.*} and old-style C{twisted.python.log} ones) -> C{twisted};
    other namespaces whole."""
    namespace = event.get("log_namespace") or ""
    if namespace.startswith("keda_proxy."):
        return namespace.rpartition(".")[2].lstrip("_")
    if namespace == "log_legacy" or namespace.startswith("twisted."):
        return "twisted"
    return namespace or "interceptor"


@implementer(ILogObserver)
class ZapObserver:
    """Writes each event at or above C{config.level} as one zap line to
    C{out} (stdout as it is when the observer is made: twistd later points
    C{sys.stdout} into the log system itself)."""

    def __init__(self, config: ZapConfig, out: Optional[TextIO] = None, tz=None):
        self.config = config
        self._out = out if out is not None else sys.stdout
        self._tz = tz

    def __call__(self, event) -> None:
        names = _LEVELS.get(event.get("log_level"), _LEVELS[LogLevel.info])
        if names[2] < self.config.level:
            return
        failure = event.get("log_failure")
        if failure is None and event.get("isError") and isinstance(event.get("failure"),
                                                                   Failure):
            # twisted.python.log.err(): the message is the "why" (the
            # formatted text would carry the whole traceback)
            failure = event["failure"]
            msg = event.get("why") or "Unhandled Error"
        else:
            msg = formatEvent(event)
        fields = {}
        for key, value in event.items():
            if key.startswith("log_") or key in _LEGACY_KEYS or key in _RESERVED:
                continue
            value = _jsonable(value)
            if value is not _SKIP:
                fields[key] = value
        if event.get("log_namespace") == "log_legacy":
            system = event.get("system")
            if isinstance(system, str) and system != "-" and "system" not in fields:
                fields["system"] = system
        stacktrace = None
        if failure is not None:
            if "error" not in fields:
                fields["error"] = failure.getErrorMessage()
            if names[2] >= self.config.stacktrace_level:
                stacktrace = failure.getTraceback().rstrip("\n")
        when = event.get("log_time")
        if not isinstance(when, (int, float)):
            when = time.time()
        ts = encode_time(when, self.config.time_encoding, self._tz)
        name = logger_name(event)
        if self.config.encoder == "json":
            record = {"level": names[0], "ts": ts, "logger": name, "msg": msg}
            record.update(fields)
            if stacktrace is not None:
                record["stacktrace"] = stacktrace
            self._write(lambda ascii: json.dumps(record, ensure_ascii=ascii,
                                                 separators=(",", ":")))
        else:
            line = "\t".join((ts if isinstance(ts, str) else repr(ts), names[1], name, msg))

            def console(ascii):
                text = line
                if fields:
                    text += "\t" + json.dumps(fields, ensure_ascii=ascii)
                if stacktrace is not None:
                    text += "\n" + stacktrace
                if ascii:
                    text = text.encode("ascii", "backslashreplace").decode("ascii")
                return text

            self._write(console)

    def _write(self, render) -> None:
        out = self._out
        try:
            out.write(render(False) + "\n")
        except UnicodeEncodeError:
            # a stdout that cannot take the text (or a lone surrogate)
            out.write(render(True) + "\n")
        out.flush()


class LoggingTo(MultiService):
    """The service twistd runs, wrapped so that twistd logs to C{observer}:
    twistd builds the application after the plugin's C{makeService}, then
    asks it for an C{ILogObserver} before it begins logging; this sets that
    component as the service joins the application."""

    def __init__(self, observer, service):
        super().__init__()
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent):
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def with_zap_logging(service, options, out: Optional[TextIO] = None):
    """C{service}, logging with zap lines when the options hold a zap
    flag; otherwise C{service} itself."""
    config = config_from_options(options)
    if config is None:
        return service
    return LoggingTo(ZapObserver(config, out), service)


# -- request logs ---------------------------------------------------------

#: the Go interceptor's request logger is named LoggingMiddleware
requestLog = Logger(namespace="keda_proxy.LoggingMiddleware")

_COMBINED_TIME = "%d/%b/%Y:%H:%M:%S %z"


def log_request(downstream, *, started: float, finished: float, route=None,
                cold_start: Optional[bool] = None, logger: Logger = requestLog) -> None:
    """One info event for a finished request (C{KEDA_HTTP_LOG_REQUESTS}).

    The message is the Go interceptor's line, in the combined log format
    (C{remote - - [start] "METHOD path proto" status bytes "referer"
    "agent"}); the fields are C{method}, C{path}, C{status}, C{duration}
    (seconds), C{route} (C{namespace/name}, empty when none matched),
    C{cold_start} (true when the request waited for its backend to scale
    from zero, false when it did not, null when not forwarded to the
    route's target), C{bytes}, C{proto}, C{remote_addr}, C{referer} and
    C{user_agent}.

    @param downstream: the L{keda_proxy.interfaces.IDownstreamExchange}.
    @param started: epoch seconds when the request's head arrived.
    @param finished: epoch seconds when its response ended.
    @param route: the matched L{keda_proxy.state._model.Route}, or None.
    """
    method = (downstream.method or b"").decode("latin-1")
    path = (downstream.path or b"").decode("latin-1")
    proto = (downstream.version or b"").decode("latin-1")
    host = downstream.client_address
    remote = f"{host}:{downstream.client_port}" if host and host != "unknown" else "-"
    headers = downstream.headers
    referer = (headers.get(b"Referer") or (b"",))[0].decode("latin-1")
    agent = (headers.get(b"User-Agent") or (b"",))[0].decode("latin-1")
    status = downstream.code
    size = downstream.sent_bytes
    when = datetime.fromtimestamp(started).astimezone().strftime(_COMBINED_TIME)
    line = (f'{remote} - - [{when}] "{method} {path} {proto}" {status} {size} '
            f'"{referer}" "{agent}"')
    logger.info(
        "{log_request_line}", log_request_line=line,
        method=method, path=path, status=status,
        duration=max(0.0, finished - started),
        route=route.key if route is not None else "",
        cold_start=cold_start, bytes=size, proto=proto, remote_addr=remote,
        referer=referer, user_agent=agent)
