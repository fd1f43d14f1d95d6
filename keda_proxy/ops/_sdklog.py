"""
The OpenTelemetry SDK's own log lines, in the interceptor's log.

The SDK's exporters report a collector that is down or refuses a batch
through the standard library's C{logging}, which twistd does not read: the
lines would reach standard error without the zap format, or be lost.  This
passes the C{opentelemetry} loggers' warnings and errors to Twisted's log,
from whichever thread made them, by way of the reactor.
"""

from __future__ import annotations

import logging

from twisted.logger import Logger, LogLevel

log = Logger(namespace="opentelemetry")

_LEVELS = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
           (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))


class ToTwistedLog(logging.Handler):
    """A C{logging} handler that emits each record on Twisted's log, from
    the reactor thread."""

    def __init__(self, reactor, level: int = logging.WARNING):
        super().__init__(level)
        self.reactor = reactor

    def emit(self, record: logging.LogRecord) -> None:
        level = next((ours for at, ours in _LEVELS if record.levelno >= at), LogLevel.debug)
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is still worth a line
            text = str(record.msg)
        self.reactor.callFromThread(log.emit, level, "{logger}: {text}",
                                    logger=record.name, text=text)


def route_sdk_logging(reactor, name: str = "opentelemetry") -> ToTwistedLog:
    """Send logger C{name}'s warnings and errors to Twisted's log only."""
    handler = ToTwistedLog(reactor)
    sdk = logging.getLogger(name)
    for old in [h for h in sdk.handlers if isinstance(h, ToTwistedLog)]:
        sdk.removeHandler(old)
    sdk.addHandler(handler)
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False
    return handler


__all__ = ["ToTwistedLog", "route_sdk_logging"]
