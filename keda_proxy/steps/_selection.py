"""
Endpoint selection: which ready pod gets a request (direct-pod routing).

Three selectors ship, each as a plugin of L{IEndpointSelectorPlugin}
(C{keda_proxy/plugins/builtin_selectors.py}) exactly as a third party's
would be, and C{KEDA_HTTP_ENDPOINT_SELECTOR} picks one by name:

  - C{random} (the default): uniformly at random, as the Go interceptor;
  - C{round-robin}: each pod in turn, in address order;
  - C{least-pending}: the power of two choices on requests in flight per
    pod: of two pods drawn at random, the one with fewer.  A slow pod
    collects requests, and so stops being chosen, without the proxy
    measuring anything but its own requests.
"""

from __future__ import annotations

import random
from typing import Dict, Optional, Tuple

from twisted.plugin import getPlugins
from zope.interface import implementer

from keda_proxy.interfaces import IEndpointSelector, IEndpointSelectorPlugin

Pod = Tuple[str, int]

DEFAULT_SELECTOR = "random"


class UnknownSelector(Exception):
    """No selector plugin has the configured name; the message is one line."""


@implementer(IEndpointSelector)
class RandomSelector:
    """Pick a ready pod uniformly at random, as the Go interceptor does."""

    counts_requests = False

    def __init__(self, rng: Optional[random.Random] = None):
        self._choice = (rng or random.Random()).choice

    def select(self, candidates, request):
        if len(candidates) == 1:  # the usual first pod after a scale-from-zero
            return candidates[0]
        return self._choice(candidates)

    def started(self, pod):
        pass

    def finished(self, pod):
        pass


@implementer(IEndpointSelector)
class RoundRobinSelector:
    """Each ready pod in turn, in address order, whatever order the
    EndpointSlices list them in."""

    counts_requests = False

    def __init__(self):
        self._turn = 0

    def select(self, candidates, request):
        if len(candidates) == 1:
            return candidates[0]
        turn = self._turn
        self._turn = turn + 1
        return sorted(candidates)[turn % len(candidates)]

    def started(self, pod):
        pass

    def finished(self, pod):
        pass


@implementer(IEndpointSelector)
class LeastPendingSelector:
    """The power of two choices on requests in flight per pod."""

    def __init__(self, rng: Optional[random.Random] = None):
        self._sample = (rng or random.Random()).sample
        #: pod -> requests in flight to it (only pods with some)
        self.pending: Dict[Pod, int] = {}

    def select(self, candidates, request):
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._sample(candidates, 2)
        pending = self.pending
        return b if pending.get(b, 0) < pending.get(a, 0) else a

    def started(self, pod):
        self.pending[pod] = self.pending.get(pod, 0) + 1

    def finished(self, pod):
        left = self.pending.get(pod, 0) - 1
        if left > 0:
            self.pending[pod] = left
        else:
            self.pending.pop(pod, None)


def discover_selectors() -> Dict[str, object]:
    """Every installed L{IEndpointSelectorPlugin}, by name."""
    import keda_proxy.plugins

    return {p.name: p for p in getPlugins(IEndpointSelectorPlugin, keda_proxy.plugins)}


def selector_named(name: str, plugins: Optional[Dict[str, object]] = None) -> IEndpointSelector:
    """A new selector from the plugin called C{name}.

    @raise UnknownSelector: no plugin has that name.
    """
    found = discover_selectors() if plugins is None else plugins
    plugin = found.get(name)
    if plugin is None:
        raise UnknownSelector(
            f"KEDA_HTTP_ENDPOINT_SELECTOR={name!r}: no endpoint selector of that name "
            f"(installed: {', '.join(sorted(found)) or 'none'})")
    return plugin.selector()


__all__ = ["DEFAULT_SELECTOR", "LeastPendingSelector", "RandomSelector",
           "RoundRobinSelector", "UnknownSelector", "discover_selectors", "selector_named"]
