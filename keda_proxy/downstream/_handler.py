"""
Handing an exchange to the request path, for both servers.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()

_TEXT = [(b"Content-Type", b"text/plain; charset=utf-8")]


def run_handler(handler, exchange) -> None:
    """Call C{handler(exchange)}.  A handler that raises is logged, and
    its client answered 500, or cut if its response had begun: a bug in a
    step must not leave a request hanging, nor take the connection's other
    requests with it."""
    try:
        handler(exchange)
    except Exception:
        log.failure("the request handler failed")
        if exchange.response_started:
            exchange.abort()
        else:
            exchange.answer(500, _TEXT, b"Internal Server Error\n")
