"""Shared pytest setup: the suite runs against the source tree, on one of the
two reactors the proxy is supported on.

By default that is pytest-twisted's, the reactor ``twistd keda-interceptor``
runs on (epoll on Linux).  With ``KEDA_TEST_REACTOR=keda-epoll`` it is the
opt-in ``twistd -r keda-epoll`` one, L{keda_proxy.epolldispatch.LeanEPollReactor}:
``make test`` runs the suite once on each.
"""

import os

import pytest

#: KEDA_TEST_REACTOR values: the reactor's twistd name -> how to install it
#: (None: leave it to pytest-twisted)
REACTORS = {"default": None, "keda-epoll": "keda_proxy.epolldispatch"}


def chosen_reactor() -> str:
    return os.environ.get("KEDA_TEST_REACTOR", "").strip() or "default"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Install the chosen reactor before pytest-twisted's own
    C{pytest_configure} installs the default one: finding a reactor already
    installed, it checks that it is an epoll reactor (a subclass is) and
    runs the suite on it."""
    name = chosen_reactor()
    if name not in REACTORS:
        raise pytest.UsageError(
            f"KEDA_TEST_REACTOR={name!r}: expected one of {', '.join(REACTORS)}")
    if REACTORS[name] is not None:
        from twisted.python.reflect import namedAny

        namedAny(REACTORS[name]).install()


@pytest.fixture(scope="session")
def test_reactor():
    """(the KEDA_TEST_REACTOR name, the installed reactor's type)"""
    from twisted.internet import reactor

    return chosen_reactor(), type(reactor)


@pytest.fixture(scope="module")
def ca():
    """A certificate authority made for the test module (trustme)."""
    import trustme

    return trustme.CA()
