"""
The proxy's replaceable parts, declared in one place.

The request path (L{keda_proxy.steps}) talks only to these interfaces:

 - the two sides of an exchange, whatever the protocol: the client's
   (L{IDownstreamExchange}, with its L{IRequestBody}) and the upstream's
   (L{IUpstreamExchange}, answering into an L{IResponseSink});
 - the steps themselves (L{IRequestStep}), and the plugins that add steps,
   routing or endpoint selection;
 - the readiness gate's held requests, and the sources of cluster state.

So a test or a deployment can swap any part, and HTTP/2 can be added as
one more implementation of each side.
"""

from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import Attribute, Interface

# -- the two sides of an exchange --------------------------------------------


class IBodyConsumer(Interface):
    """Where a request body goes: an upstream exchange."""

    def write_body(data):
        """One chunk of the body (bytes, never empty)."""

    def end_body(trailers=None):
        """The body is complete.

        @param trailers: the trailer fields, a list of C{(name, value)} byte
            pairs, or None.
        """


class IRequestBody(IPushProducer):
    """A request body as it arrives from the client.

    Pausing it (L{IPushProducer}) holds the client back: an upstream that
    reads slowly slows the client down, and memory stays bounded.
    """

    length = Attribute("The length in bytes: 0 for no body, None when only "
                       "its end tells (chunked, or an HTTP/2 stream).")
    done = Attribute("True once the whole body has arrived.")

    def attach(consumer):
        """Deliver the body to C{consumer} (an L{IBodyConsumer}): what
        arrived so far at once, then each chunk as it comes, then its end."""

    def detach():
        """Deliver nothing more: the consumer is done with the body."""


class IDownstreamExchange(IConsumer):
    """The client's side of one exchange: its request, and where its
    response goes.  One per request, whatever the protocol: an HTTP/1.1
    request, an HTTP/2 stream, or a twisted.web request.

    As an L{IConsumer} it takes the response body, and the upstream
    connection registers as its streaming producer: a client that reads
    slowly pauses the upstream.
    """

    method = Attribute("The method, bytes.")
    target = Attribute("The request-target as sent: origin form, absolute "
                       "form, or C{*} (bytes).")
    path = Attribute("The target's path without its query, bytes.")
    version = Attribute("C{b'HTTP/1.1'}, C{b'HTTP/1.0'} or C{b'HTTP/2'}.")
    headers = Attribute(
        "The request's header fields: a dict of canonical name (bytes, as "
        "C{Content-Type}) to its values (a list of bytes) in arrival order.  "
        "A step may change it before the request is forwarded.")
    body = Attribute("The L{IRequestBody}.")
    scheme = Attribute("C{b'https'} when the client came over TLS, else C{b'http'}.")
    client_address = Attribute("The client's IP address (str), or C{'unknown'}.")
    client_port = Attribute("The client's port (int), or 0.")
    response_headers = Attribute(
        "Fields the proxy adds to the response (C{X-KEDA-HTTP-Cold-Start}): "
        "a dict like L{headers}, sent after the upstream's own.")
    code = Attribute("The response status once its head is out, else None.")
    sent_bytes = Attribute("Response body bytes sent so far.")
    finished = Attribute("True once the response is complete or the client "
                         "is gone: nothing more may be sent.")

    def respond(head):
        """Send the response head.

        @param head: a L{keda_proxy.upstream.ResponseHead}: status, reason,
            and the upstream's end-to-end header lines.
        """

    def respond_whole(head, body):
        """L{respond}, then the whole body, then L{finish}: a response with
        a Content-Length whose body came with its head, the usual small
        one, which a protocol may send at once.

        @param body: bytes, as many as the head's Content-Length says.
        """

    def informational(head):
        """Pass on a 1xx response (103 Early Hints) ahead of the final one;
        protocols or clients that cannot take one drop it."""

    def answer(code, fields, body):
        """A whole response made by the proxy itself (errors, static routes).

        @param fields: a list of C{(name, value)} byte pairs.
        @param body: bytes.
        """

    def finish(trailers=None):
        """The response is complete.  C{trailers}: a list of C{(name,
        value)} byte pairs, sent where the protocol and the client allow."""

    def abort():
        """Cut the response short, so that the client sees it incomplete:
        HTTP/1.1 closes the connection, HTTP/2 resets the stream."""

    def notify_done(callback):
        """Call C{callback} once, when the exchange is over: with None after
        the response went out, or with a Failure when the client left
        first.  One callback per exchange."""

    def take_over():
        """Hand the client connection over for a byte tunnel (an upgrade
        the upstream accepted with 101).

        @return: C{(transport, pending)}: the client's transport, and the
            bytes that arrived past the request.  The caller becomes its
            protocol's sole user.
        @raise NotImplementedError: where the protocol has no upgrade.
        """


class IResponseSink(Interface):
    """Receives one upstream response, in this order: C{response_head},
    C{response_data}*, then exactly one of C{response_done} /
    C{response_failed} (or C{response_upgraded} for a 101); or only
    C{response_whole}."""

    def response_head(head):
        """@param head: the L{keda_proxy.upstream.ResponseHead}."""

    def response_data(data):
        """One chunk of the response body."""

    def response_done(trailers=None):
        """The response is complete.  C{trailers}: the trailer fields that
        followed its body (HTTP/1.1 chunked trailers, HTTP/2 trailing
        HEADERS: gRPC's C{grpc-status}), a list of C{(name, value)} byte
        pairs, or None."""

    def response_whole(head, body):
        """C{response_head}, C{response_data} and C{response_done} at once:
        a counted body that arrived with its head, in one read."""

    def response_failed(reason, response_started):
        """The exchange broke.  C{response_started} tells whether any of
        the response had arrived (if not, and nothing was sent by the
        client yet, the request may be retried)."""

    def response_informational(head):
        """A 1xx other than 100 and 101 (103 Early Hints) arrived ahead of
        the final response."""

    def response_upgraded(connection, rest):
        """A 101: the connection is now a byte tunnel; C{rest} is what
        already arrived past the response head."""


class IConnectionOwner(Interface):
    """The pool's side of an upstream connection."""

    key = Attribute("The pool key this connection belongs to.")

    def connection_reusable(connection):
        """The exchange ended cleanly and the connection may be reused."""

    def connection_lost(connection):
        """The connection is gone (idle or not)."""


class IServiceResolver(Interface):
    """Maps an upstream host name to an IP address without blocking."""

    def resolve(host):
        """
        @param host: a host name such as C{"svc.ns"}.
        @return: an IP address string, or None to fall back to DNS.
        """


class IUpstreamExchange(IBodyConsumer):
    """The upstream's side of one exchange: a request sent on a pooled
    connection (HTTP/1.1: the connection itself, one request at a time;
    HTTP/2: one stream of a connection), its response delivered to an
    L{IResponseSink}."""

    transport = Attribute(
        "The producer of the response body, registered with the "
        "L{IDownstreamExchange} for flow control; the request body registers "
        "with it in turn (C{registerProducer}), to be paused while the "
        "upstream cannot take more.")
    more_expected = Attribute("True while more of the response is to come.")
    owner = Attribute("The L{IConnectionOwner} (the pool), or None; "
                      "C{owner.connection_reusable(self)} gives back an "
                      "exchange no request used.")
    uses = Attribute("Requests the connection has carried, this one included: "
                     "a failure on a reused connection may be a stale one.")
    answered = Attribute("Whether any of the response arrived.")
    usable = Attribute("Whether a new request may be sent on it.")
    idle_since = Attribute("When the connection last went idle (the clock's "
                           "seconds).")

    def send(method, head, sink, chunked_body, has_body, upgrade):
        """Send a request head (bytes, HTTP/1.1 syntax); its body, if any,
        follows through L{IBodyConsumer}.  C{upgrade}: the protocol the
        client asks to switch to, or None."""

    def arm_timer(delay, fn):
        """Call C{fn} if no response head arrives within C{delay} seconds."""

    def disarm_timer():
        """The response head arrived: no timeout any more."""

    def abort():
        """Drop the exchange and its connection."""

    def abort_with(error):
        """Drop it, reporting C{error} to the sink."""


# -- the request path ---------------------------------------------------------


class IRequestStep(Interface):
    """One step of the request path (L{keda_proxy.steps.build_request_path}).

    A step ends, now or later, by passing the request on to the next step
    (C{next.handle(context)}) or by answering it through
    C{context.downstream}; it keeps no per-request state of its own, only
    what it puts in the context.
    """

    def handle(context):
        """@param context: the request's L{keda_proxy.steps.RequestContext}."""


class IRequestStepPlugin(Interface):
    """
    A third-party request step, discovered with
    C{twisted.plugin.getPlugins(IRequestStepPlugin, keda_proxy.plugins)}
    and enabled by name, in order, in C{KEDA_HTTP_REQUEST_STEPS}.  Its step
    runs for every routed request before it is counted, held or forwarded:
    a header rewrite, an auth check.
    """

    name = Attribute("The C{KEDA_HTTP_REQUEST_STEPS} entry that enables it.")

    def step(next):
        """A new L{IRequestStep} that passes requests on to C{next}."""


class IRouter(Interface):
    """Maps a request to the route that should serve it."""

    def route(request):
        """
        @param request: a L{keda_proxy.state.RequestFacts}.
        @return: the matching L{keda_proxy.state.Route}, or L{None}.
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
        @param request: a L{keda_proxy.state.RequestFacts}.
        @param snapshot: the current L{keda_proxy.state.Snapshot}; its
            C{routes} maps C{namespace/name} to every known route.
        @return: a L{keda_proxy.state.Route} (normally one of
            C{snapshot.routes}), or L{None} to let the next step decide.
        """


class IEndpointSelector(Interface):
    """Chooses which ready pod receives a request (direct-pod routing).

    One selector serves the whole interceptor, on the reactor thread.

    A selector that weighs nothing by requests in flight may have a false
    C{counts_requests} attribute: the proxy then saves the L{started} and
    L{finished} calls of every request.  Without one, they are made.
    """

    def select(candidates, request):
        """
        @param candidates: a non-empty sequence of C{(ip, port)} pairs.
        @param request: the L{keda_proxy.state.RequestFacts}.
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


__all__ = [
    "IBodyConsumer", "IConnectionOwner", "IDownstreamExchange", "IEndpointSelector",
    "IEndpointSelectorPlugin",
    "IHeldRequest", "IRequestBody", "IRequestStep", "IRequestStepPlugin", "IResponseSink",
    "IRouter", "IRoutingPlugin", "IServiceResolver", "IStateSink", "IStateSource",
    "IUpstreamExchange",
]
