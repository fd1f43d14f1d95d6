"""
The one value a request carries from step to step.
"""

from __future__ import annotations

from typing import Optional


class RequestContext:
    """One request's state on its way through the steps.

    Each step reads what the earlier ones left here and adds its own part;
    no step looks into another.  A plain class with class-level defaults:
    one is made for every request, and most fields only matter on unusual
    paths (a cold start, a timeout, a retry).
    """

    #: the route the request matched (L{keda_proxy.steps._route.RouteRequest})
    route = None
    #: the L{keda_proxy.state.Snapshot} the request is served from
    snapshot = None
    #: its L{keda_proxy.state.RequestFacts}: what routing sees
    facts = None
    #: a static route ``WhenUnavailable`` whose target is available: the
    #: request goes to it uncounted and unheld, as in Go
    bypass = False
    #: its ``/queue`` count, while counted
    ticket = None
    #: when the request deadline passes (clock seconds), or None
    deadline_at: Optional[float] = None
    #: whether it waited for a scale from zero (None: not sent to the target)
    cold_start: Optional[bool] = None
    #: the readiness timeout passed on a route with a fallback: send it there
    fallback = False
    #: the ready pod the readiness gate picked when it released the request
    released_pod = None
    #: the upstream request head, built once (L{keda_proxy.steps._forward})
    request_head = None
    #: the protocol the client asks to switch to (WebSockets), if any
    upgrade = None
    #: where the request goes (L{keda_proxy.steps._targets.Target})
    target = None
    #: the pod it was sent to, as the endpoint selector was told
    pod = None
    #: its L{keda_proxy.ops._tracing.RequestTrace}, when tracing is on
    trace = None
    #: the request deadline passed
    timed_out = False
    #: the client left before its response was complete
    gone = False
    #: the exchange is over (answered, or the client left)
    done = False
    #: what the step that is waiting does if the request deadline passes
    on_deadline = None
    _cleanups = ()
    _departures = ()
    _timers = ()

    def __init__(self, downstream, clock, started: float):
        #: the L{keda_proxy.interfaces.IDownstreamExchange}
        self.downstream = downstream
        self.clock = clock
        self.started = started

    @property
    def over(self) -> bool:
        """Nothing more can be sent: answered already, or the client left."""
        return self.done or self.downstream.finished

    def later(self, delay: float, fn):
        """A timer cancelled when the exchange ends."""
        timer = self.clock.callLater(delay, fn)
        if self._timers:
            self._timers.append(timer)
        else:
            self._timers = [timer]
        return timer

    def on_end(self, fn) -> None:
        """Call C{fn(gone)} when the exchange ends; C{gone} is True when the
        client left first.  Later registrations run first."""
        if self._cleanups:
            self._cleanups.append(fn)
        else:
            self._cleanups = [fn]

    def on_gone(self, fn) -> None:
        """Call C{fn()} if the client leaves before the exchange is over
        (before the L{on_end} calls), and not when it ends answered: for
        what only a departure must undo, which then costs nothing on the
        usual path.  Later registrations run first."""
        if self._departures:
            self._departures.append(fn)
        else:
            self._departures = [fn]

    def end(self, gone: bool) -> None:
        """The exchange is over: run what the steps registered, once."""
        if self.done:
            return
        self.done = True
        self.gone = gone
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        cleanups, departures = self._cleanups, self._departures
        # the steps' per-request objects refer back to the context: drop
        # them, so that reference counting frees it all without the
        # collector
        self._cleanups = self._departures = self._timers = ()
        self.on_deadline = None
        if gone:
            for fn in reversed(departures):
                fn()
        for fn in reversed(cleanups):
            fn(gone)
