"""
Routing with third-party plugins in front of the routing table.

Plugins are found with the Twisted plugin system in the
C{keda_proxy.plugins} package; see ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from attrs import define, field
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import implementer

from keda_proxy.interfaces import IRouter, IRoutingPlugin
from keda_proxy.state._model import RequestFacts, Route
from keda_proxy.state._store import StateStore

log = Logger()


def discover_routing_plugins() -> Tuple[object, ...]:
    """Every installed L{IRoutingPlugin}, in (priority, name) order."""
    import keda_proxy.plugins

    found = list(getPlugins(IRoutingPlugin, keda_proxy.plugins))
    found.sort(key=lambda p: (getattr(p, "priority", 0), getattr(p, "name", "")))
    return tuple(found)


@implementer(IRouter)
@define
class PluginRouter:
    """Ask each plugin in turn, then the current snapshot's table.

    A plugin that raises is skipped for that request; its first failure is
    logged with a traceback and later ones are only counted, so a broken
    plugin cannot flood the log or break routing.
    """

    store: StateStore
    plugins: Tuple[object, ...] = ()
    failures: dict = field(factory=dict)

    @classmethod
    def with_plugins(cls, store: StateStore, plugins: Iterable[object]) -> "PluginRouter":
        return cls(store, tuple(plugins))

    def route(self, request: RequestFacts) -> Optional[Route]:
        snapshot = self.store.current
        for plugin in self.plugins:
            try:
                route = plugin.route(request, snapshot)
            except Exception:
                name = getattr(plugin, "name", repr(plugin))
                seen = self.failures.get(name, 0)
                self.failures[name] = seen + 1
                if not seen:
                    log.failure("routing plugin {plugin} failed; skipping it for this "
                                "request (further failures are counted, not logged)",
                                plugin=name)
                continue
            if route is not None:
                return route
        return snapshot.table.route(request)
