"""
The interceptor's reactor, as a twistd reactor plugin: ``twistd -r keda-epoll
keda-interceptor``.  Light on purpose (twistd lists reactors in ``--help``):
the reactor's module is imported only when it is installed.
"""

from twisted.application.reactors import Reactor

kedaEPoll = Reactor(
    "keda-epoll",
    "keda_proxy.epolldispatch",
    "epoll, with direct event dispatch and eager IPv4 dials (Linux; keda-interceptor).",
)
