"""
twistd plugin for keda-interceptor: ``twistd keda-interceptor``.

Deliberately light: twistd imports this during ``--help`` before the
reactor is chosen, so everything real is imported lazily from
C{keda_proxy.tap}.
"""

from twisted.application.service import ServiceMaker

kedaInterceptor = ServiceMaker(
    "keda-interceptor",
    "keda_proxy.tap",
    "KEDA HTTP add-on interceptor: scale-to-zero HTTP proxy for Kubernetes.",
    "keda-interceptor",
)
