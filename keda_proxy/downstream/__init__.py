"""
The proxy's side facing clients: an HTTP/1.1 server whose requests stream
(L{HTTP1ServerFactory}), each an L{keda_proxy.interfaces.IDownstreamExchange}.
"""

from keda_proxy.downstream._body import BODY_HIGH_WATER, RequestBody
from keda_proxy.downstream._head import MAX_HEAD_SIZE, HeadError, parse_head
from keda_proxy.downstream._http1 import (
    BODY_GRACE,
    BODY_MIN_RATE,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    HTTP1Exchange,
    HTTP1ServerFactory,
    HTTP1ServerProtocol,
    listen_backlog,
)

__all__ = [
    "BODY_GRACE",
    "BODY_HIGH_WATER",
    "BODY_MIN_RATE",
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_HEAD_SIZE",
    "HTTP1Exchange",
    "HTTP1ServerFactory",
    "HTTP1ServerProtocol",
    "HeadError",
    "RequestBody",
    "listen_backlog",
    "parse_head",
]
