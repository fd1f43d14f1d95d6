"""
Request logs (KEDA_HTTP_LOG_REQUESTS) come from the pipeline: one event per
request with its method, path, status, duration, route and cold start,
including requests that end without a response; and what a drain waits
for: every request the pipeline has not finished, counted or not.
"""

from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from keda_proxy.state._model import MODE_WHEN_UNAVAILABLE
from tests.builders import endpoint_slice
from tests.proxyfakes import OK_5, Harness
from tests.test_proxy import _static, warm


def _logged(h, send):
    h.pipeline.log_requests = True
    with capturedLogs() as events:
        send()
    return [e for e in events if e.get("log_namespace", "").endswith("LoggingMiddleware")]


def test_a_forwarded_request_is_logged_once_with_its_fields():
    h = Harness()
    warm(h)

    def send():
        h.get(b"/a?b=1")
        h.clock.advance(0.25)
        h.upstream().respond(OK_5)

    (event,) = _logged(h, send)
    assert (event["method"], event["path"], event["status"]) == ("GET", "/a", 200)
    assert event["route"] == "default/web" and event["cold_start"] is False
    assert event["duration"] == 0.25


def test_an_unrouted_request_is_logged_without_a_route():
    h = Harness()
    warm(h)
    (event,) = _logged(h, lambda: h.get(host=b"nowhere.example"))
    assert (event["status"], event["route"], event["cold_start"]) == (404, "", None)


def test_a_held_request_is_logged_as_a_cold_start():
    h = Harness()
    warm(h, slices=[endpoint_slice(ready=False)])

    def send():
        h.get()
        warm(h)  # the pod becomes ready
        h.upstream().respond(OK_5)

    (event,) = _logged(h, send)
    assert event["cold_start"] is True and event["status"] == 200


def test_a_client_that_leaves_is_logged_too():
    h = Harness()
    warm(h)

    def send():
        proto, _ = h.get()
        proto.connectionLost(Failure(ConnectionError()))

    (event,) = _logged(h, send)
    assert event["route"] == "default/web"


def test_no_log_unless_asked():
    h = Harness()
    warm(h)
    with capturedLogs() as events:
        h.get(host=b"nowhere.example")
    assert not [e for e in events if e.get("log_namespace", "").endswith("LoggingMiddleware")]


def test_in_flight_counts_uncounted_static_forwards_until_they_end():
    h = Harness()
    warm(h, _route_with_static())
    h.get(b"/status")  # WhenUnavailable while available: forwarded, not counted
    assert h.counter.in_flight() == 0
    assert h.pipeline.in_flight.count == 1
    h.upstream().respond(OK_5)
    assert h.pipeline.in_flight.count == 0


def _route_with_static():
    from tests.builders import route

    return route(static_routes=(_static(MODE_WHEN_UNAVAILABLE),))


def test_stopping_drains_the_proxy_sites_then_waits_for_every_request():
    from attrs import define
    from twisted.internet.defer import succeed
    from twisted.internet.testing import MemoryReactorClock

    from keda_proxy._app import Interceptor, InterceptorService
    from keda_proxy.ops._config import load_config
    from keda_proxy.state._model import ALL_KINDS

    @define
    class _Listener:
        factory: object
        running: bool = True

        def stopService(self):
            self.running = False
            return succeed(None)

    clock = MemoryReactorClock()
    config = load_config({"KEDA_HTTP_PROXY_PORT": "0", "KEDA_HTTP_ADMIN_PORT": "0",
                          "KEDA_HTTP_SHUTDOWN_DELAY": "1s", "KEDA_HTTP_DRAIN_TIMEOUT": "0s"})
    ic = Interceptor.build(clock, config, ALL_KINDS, plugins=())
    site = ic.proxy_site()
    svc = InterceptorService(ic, proxies=[_Listener(site)])
    ic.pipeline.in_flight.count = 1  # a request (counted or not) still in flight
    done = []
    svc.stopService().addCallback(done.append)
    assert not site.draining  # the shutdown delay serves as usual
    clock.advance(1)
    assert site.draining and not svc.proxies[0].running
    clock.advance(10)
    assert not done
    ic.pipeline.in_flight.count = 0
    clock.advance(1)
    assert done
