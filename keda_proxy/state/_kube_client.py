"""
Getting a ``kubernetes`` ApiClient, and one whose sockets can be cut.

Two jobs live here because both are about the client's plumbing rather
than about watching:

- L{load_api_client} finds credentials the way the Go interceptor's
  controller-runtime does for the cases we support (an explicit
  ``--kubeconfig``, then ``KUBECONFIG``, then the pod's service account) and
  fails with one line when none works, so ``twistd`` can exit with a clear
  message instead of a traceback.
- L{interruptible_client} gives each watch thread its own ApiClient whose
  sockets are tracked from the moment they connect.  A thread blocked in
  C{recv} waiting for response headers has no response object to
  C{shutdown()} yet; cutting its socket is the only way to wake it within
  the 2 s that C{stopService} allows.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from urllib3.connection import HTTPConnection, HTTPSConnection

from keda_proxy import __version__

USER_AGENT = f"keda-interceptor/{__version__}"


class KubeConfigError(Exception):
    """No usable Kubernetes configuration; the message is one line."""


def load_api_client(kubeconfig: str | None = None,
                    environ=None) -> k8s_client.ApiClient:
    """An ApiClient from, in order: C{kubeconfig}, C{$KUBECONFIG}, in-cluster.

    An explicit path that fails is an error even if the service account
    would work: the operator asked for that file.  (Unlike client-go we do
    not fall back to C{~/.kube/config}: a proxy that silently picks up a
    developer's default cluster is a surprise, and without any
    configuration the caller should say "use --manifests or a kubeconfig".)

    @raise KubeConfigError: with a one-line reason.
    """
    env = os.environ if environ is None else environ
    path = kubeconfig or env.get("KUBECONFIG")
    if path:
        files = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
        if not any(os.path.isfile(f) for f in files):
            raise KubeConfigError(f"cannot load kubeconfig {path!r}: no such file")
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(config_file=path, client_configuration=cfg,
                                        persist_config=False)
        except Exception as e:  # ConfigException, OSError, yaml errors...
            raise KubeConfigError(f"cannot load kubeconfig {path!r}: {_one_line(e)}") from None
        return k8s_client.ApiClient(cfg)
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except Exception as e:
        raise KubeConfigError(
            "no Kubernetes configuration: pass --kubeconfig or set KUBECONFIG, "
            f"or run in a pod with a service account (in-cluster: {_one_line(e)})") from None
    return k8s_client.ApiClient(cfg)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class SocketTracker:
    """Every socket an ApiClient's pools opened, so another thread can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.add(sock)

    def cut_all(self) -> int:
        """C{shutdown(SHUT_RDWR)} every tracked socket; blocked reads return.

        Thread-safe, and safe on sockets that are already closed.
        """
        with self._lock:
            socks = list(self._socks)
        n = 0
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                n += 1
            except OSError:
                pass
        return n


def _tracked_pool_classes(tracker: SocketTracker) -> dict:
    """urllib3 pool classes whose connections report new sockets to C{tracker}.

    C{_new_conn} returns the raw TCP socket before any TLS handshake, so a
    thread blocked in the handshake can be woken too.
    """

    class Conn(HTTPConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            tracker.add(sock)
            return sock

    class TLSConn(HTTPSConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            tracker.add(sock)
            return sock

    class Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = Conn

    class TLSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = TLSConn

    return {"http": Pool, "https": TLSPool}


def interruptible_client(template: k8s_client.ApiClient):
    """A new ApiClient with C{template}'s configuration, and its L{SocketTracker}.

    The new client also has urllib3's own retries turned off: the watch
    loop does its own (jittered, capped) retrying, and urllib3's would
    quietly multiply the read timeout on a half-open connection.
    """
    api = k8s_client.ApiClient(template.configuration)
    api.user_agent = USER_AGENT
    tracker = SocketTracker()
    pm = api.rest_client.pool_manager
    pm.clear()
    pm.connection_pool_kw["retries"] = False
    if type(pm) in (urllib3.PoolManager, urllib3.ProxyManager):
        pm.pool_classes_by_scheme = _tracked_pool_classes(tracker)
    return api, tracker
