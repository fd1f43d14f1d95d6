"""
The admin server KEDA's scaler talks to: ``/queue``, ``/livez``, ``/readyz``.
"""

from __future__ import annotations

import json
from typing import Callable

from twisted.web import http
from twisted.web.resource import Resource

from keda_proxy.steps._counting import QueueCounter


class _Leaf(Resource):
    isLeaf = True


class QueueResource(_Leaf):
    """``{"ns/route": {"Concurrency": n, "RequestCount": m}}``, every known
    route present, as the external scaler expects."""

    def __init__(self, counter: QueueCounter):
        super().__init__()
        self.counter = counter

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.counter.as_json_dict()).encode("utf-8") + b"\n"


class LiveResource(_Leaf):
    """Always 200 while the process can answer at all."""

    def render_GET(self, request):
        return b""


class ReadyResource(_Leaf):
    """200 once the routing snapshot has synced; 503 before, and while
    draining, so that Kubernetes stops sending traffic first."""

    def __init__(self, is_ready: Callable[[], bool]):
        super().__init__()
        self.is_ready = is_ready

    def render_GET(self, request):
        code = http.OK if self.is_ready() else http.SERVICE_UNAVAILABLE
        request.setResponseCode(code)
        return http.RESPONSES[code]


def admin_root(counter: QueueCounter, is_ready: Callable[[], bool]) -> Resource:
    root = Resource()
    root.putChild(b"queue", QueueResource(counter))
    root.putChild(b"livez", LiveResource())
    root.putChild(b"readyz", ReadyResource(is_ready))
    return root
