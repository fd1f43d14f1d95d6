"""
The proxy's replaceable parts, declared in one place.

The request pipeline (``keda_proxy.steps._exchange``) talks only to these
interfaces, so a test or a deployment can swap any step: the routing
table, a third-party routing plugin, the endpoint selection, or the
source of cluster state.
"""

from zope.interface import Attribute, Interface


class IRouter(Interface):
    """Maps a request to the route that should serve it."""

    def route(request):
        """
        @param request: a L{keda_proxy.state._model.RequestFacts}.
        @return: the matching L{keda_proxy.state._model.Route}, or L{None}.
        """


class IRoutingPlugin(Interface):
    """
    A third-party routing step, discovered with
    C{twisted.plugin.getPlugins(IRoutingPlugin, keda_proxy.plugins)}.

    Plugins are consulted in ascending C{priority} (then C{name}) before
    the built-in routing table; the first one that returns a route wins.
    A plugin that raises is logged and skipped for that request.
    """

    name = Attribute("A short unique name, used in logs.")
    priority = Attribute("An int; lower runs first.")

    def route(request, snapshot):
        """
        @param request: a L{keda_proxy.state._model.RequestFacts}.
        @param snapshot: the current L{keda_proxy.state._store.Snapshot}; its
            C{routes} maps C{namespace/name} to every known route.
        @return: a L{keda_proxy.state._model.Route} (normally one of
            C{snapshot.routes}), or L{None} to let the next step decide.
        """


class IEndpointSelector(Interface):
    """Chooses which ready pod receives a request (direct-pod routing).

    One selector serves the whole interceptor, on the reactor thread.
    """

    def select(candidates, request):
        """
        @param candidates: a non-empty sequence of C{(ip, port)} pairs.
        @param request: the L{keda_proxy.state._model.RequestFacts}.
        @return: one of C{candidates}.
        """

    def started(pod):
        """A request is being sent to C{pod} (an C{(ip, port)}); for
        selectors that weigh pods by their requests in flight."""

    def finished(pod):
        """A request that L{started} on C{pod} ended, however it ended."""


class IEndpointSelectorPlugin(Interface):
    """
    A named endpoint selector, discovered with
    C{twisted.plugin.getPlugins(IEndpointSelectorPlugin, keda_proxy.plugins)}
    and chosen by C{KEDA_HTTP_ENDPOINT_SELECTOR}.  The built-in ones
    (C{random}, C{round-robin}, C{least-pending}) are plugins too.
    """

    name = Attribute("The KEDA_HTTP_ENDPOINT_SELECTOR value that chooses it.")

    def selector():
        """A new L{IEndpointSelector}, one per interceptor."""


class IHeldRequest(Interface):
    """A request held by L{keda_proxy.steps._readiness.ReadinessGate.hold} until its
    Service has a ready pod."""

    def ready(pod):
        """The Service is ready.  Called once, on the reactor thread.

        @param pod: the ready pod C{(ip, port)} the endpoint selector picked
            for the request's port name, or None when that port name has
            none (the request then goes to the Service address).
        """

    def pod_connection():
        """What a pod connection for this request is made of, for opening
        some while it waits (L{keda_proxy.upstream._prewarm.PodWarmer}).

        @return: C{(scheme, TLS server name)}, or None for none.
        """


class IStateSink(Interface):
    """
    Where sources put parsed cluster objects.  Called on the reactor
    thread only; the sink turns them into immutable snapshots.
    """

    def replace(kind, objects):
        """
        Replace every object of C{kind} (one of L{keda_proxy.state._model.ALL_KINDS})
        with C{objects}, a mapping of C{namespace/name} to a parsed value,
        and mark that kind as synced.
        """

    def put(kind, key, obj):
        """Add or update one object."""

    def remove(kind, key):
        """Delete one object; a missing key is not an error."""


class IStateSource(Interface):
    """A producer of cluster objects (manifest files, the Kubernetes API)."""

    kinds = Attribute("The kinds this source feeds; /readyz waits for all.")
