"""
Request steps from third-party plugins, enabled by name.

Plugins are found with the Twisted plugin system in the
C{keda_proxy.plugins} package, as routing plugins and endpoint selectors
are; C{KEDA_HTTP_REQUEST_STEPS} names the ones to run, in order.  Only
the named ones run: an installed plugin does nothing until it is named,
so installing a package cannot change the request path by itself.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from twisted.plugin import getPlugins

from keda_proxy.interfaces import IRequestStepPlugin


class UnknownRequestStep(Exception):
    """No request-step plugin has a configured name; the message is one line."""


def discover_request_steps() -> Dict[str, object]:
    """Every installed L{IRequestStepPlugin}, by name."""
    import keda_proxy.plugins

    return {p.name: p for p in getPlugins(IRequestStepPlugin, keda_proxy.plugins)}


def request_steps_named(names: Iterable[str], plugins: Optional[Dict[str, object]] = None
                        ) -> Tuple[object, ...]:
    """The plugins called C{names}, in that order.

    @raise UnknownRequestStep: a name no installed plugin has.
    """
    names = tuple(names)
    if not names:
        return ()  # no plugin scan when none is wanted
    found = discover_request_steps() if plugins is None else plugins
    for name in names:
        if name not in found:
            raise UnknownRequestStep(
                f"KEDA_HTTP_REQUEST_STEPS: no request step plugin named {name!r} "
                f"(installed: {', '.join(sorted(found)) or 'none'})")
    return tuple(found[name] for name in names)


__all__ = ["UnknownRequestStep", "discover_request_steps", "request_steps_named"]
