"""
An example third-party request step: every request must carry a known API
key in ``X-Api-Key``, or it is answered 401 by the interceptor.

Enable it with ``KEDA_HTTP_REQUEST_STEPS=api-key``; ``API_KEYS`` holds the
accepted keys, comma-separated (none: every request is refused).  The step
runs before the request is counted in ``/queue`` or held for a cold start,
so a refused request never wakes a workload scaled to zero.  The key is
removed before forwarding: the workload never sees it.

It ships as its own distribution (see setup.cfg beside this folder) that
installs only this module into the ``keda_proxy.plugins`` plugin package,
never an ``__init__.py``.
"""

import hmac
import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from keda_proxy.interfaces import IRequestStep, IRequestStepPlugin

#: request header names are canonical (``X-Api-Key``), values bytes
HEADER = b"X-Api-Key"


@implementer(IRequestStep)
class RequireApiKey:
    """Pass a request with a known key on to C{next}; answer the others."""

    def __init__(self, keys, next):
        self.keys = keys
        self.next = next

    def handle(self, context):
        downstream = context.downstream
        given = downstream.headers.pop(HEADER, [])
        # compare_digest: how long a comparison takes tells nothing of a key
        if len(given) == 1 and any(hmac.compare_digest(given[0], k) for k in self.keys):
            self.next.handle(context)
            return
        downstream.answer(401, [(b"Content-Type", b"text/plain; charset=utf-8"),
                                (b"WWW-Authenticate", b'ApiKey header="X-Api-Key"')],
                          b"a valid X-Api-Key header is required\n")


@implementer(IPlugin, IRequestStepPlugin)
class ApiKeyPlugin:
    name = "api-key"

    def __init__(self, keys=None):
        #: the accepted keys; None: read API_KEYS when the steps are made
        self.keys = keys

    def step(self, next):
        keys = self.keys
        if keys is None:
            keys = [k.strip() for k in os.environ.get("API_KEYS", "").split(",")]
        return RequireApiKey(tuple(k.encode() for k in keys if k), next)


apiKey = ApiKeyPlugin()
