"""
The listeners: a port that cannot be had stops start-up at once with one
line and exit status 1; by default every listener takes IPv4 and IPv6
clients on one socket (as Go's ``:8080`` does), and ``--interface`` narrows
that to one address.  Real ``twistd keda-interceptor`` processes on
loopback, plus a few in-process checks of what a process cannot show.
"""

import errno
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, globalLogPublisher

from keda_proxy import _app as app
from tests.builders import route_yaml
from tests.netsupport import eventually, free_port

TWISTD = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "keda-interceptor"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no ::1")


def url(host, port, path="/"):
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def get(target, host_header=None):
    """(status, body); raises OSError when nothing answers."""
    req = urllib.request.Request(target, headers={"Host": host_header} if host_header else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def refuses(host, port) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def start(tmp_path, manifest_text="", args=(), **env_extra):
    """A ``twistd -n keda-interceptor`` process; its output (stdout and
    stderr) goes to ``interceptor.log``."""
    (tmp_path / "m.yaml").write_text(manifest_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEDA_", "KUBE", "OTEL_"))}
    env.update(KEDA_HTTP_PROXY_PORT=str(free_port()), KEDA_HTTP_ADMIN_PORT=str(free_port()),
               OTEL_PROM_EXPORTER_ENABLED="false", KEDA_HTTP_SHUTDOWN_DELAY="0s",
               KEDA_HTTP_DRAIN_TIMEOUT="1s")
    env.update(env_extra)
    out = open(tmp_path / "interceptor.log", "w+")
    proc = subprocess.Popen(TWISTD + ["--manifests", str(tmp_path / "m.yaml"), *args],
                            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    proc.out = out
    proc.proxy, proc.admin = int(env["KEDA_HTTP_PROXY_PORT"]), int(env["KEDA_HTTP_ADMIN_PORT"])
    return proc


def output(proc) -> str:
    proc.out.flush()
    proc.out.seek(0)
    return proc.out.read()


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.out.close()


@pytest.fixture
def taken_port():
    """A port some other socket is listening on (on 127.0.0.1, which
    clashes with a listener on every address too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _tls_env(tmp_path, port):
    import trustme

    cert = trustme.CA().issue_cert("proxy.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    return dict(KEDA_HTTP_PROXY_TLS_ENABLED="true", KEDA_HTTP_PROXY_TLS_PORT=str(port),
                KEDA_HTTP_PROXY_TLS_CERT_PATH=str(tmp_path / "tls.crt"),
                KEDA_HTTP_PROXY_TLS_KEY_PATH=str(tmp_path / "tls.key"))


@pytest.mark.parametrize("name", ["proxy", "TLS proxy", "admin", "metrics"])
def test_a_port_in_use_stops_startup_with_one_line_and_status_1(
        tmp_path, processes, taken_port, name):
    env = {
        "proxy": lambda: dict(KEDA_HTTP_PROXY_PORT=str(taken_port)),
        "TLS proxy": lambda: _tls_env(tmp_path, taken_port),
        "admin": lambda: dict(KEDA_HTTP_ADMIN_PORT=str(taken_port)),
        "metrics": lambda: dict(OTEL_PROM_EXPORTER_ENABLED="true",
                                OTEL_PROM_EXPORTER_PORT=str(taken_port)),
    }[name]()
    proc = start(tmp_path, **env)
    processes.append(proc)
    assert proc.wait(timeout=10) == 1, output(proc)
    text = output(proc)
    lines = [line for line in text.splitlines() if str(taken_port) in line]
    assert len(lines) == 1, text
    assert f"{name} listener: cannot listen on port {taken_port}" in lines[0]
    assert "in use" in lines[0]
    assert "Traceback" not in text
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize("interface", [None, "::"])
def test_listeners_take_ipv4_and_ipv6_clients_by_default(tmp_path, processes, interface):
    """One socket per listener answers on 127.0.0.1 and on ::1; an IPv4
    client reaches the upstream as 127.0.0.1 (X-Forwarded-For), not as
    ::ffff:127.0.0.1."""
    seen = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("X-Forwarded-For"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        bport = backend.server_address[1]
        args = ["--interface", interface] if interface else []
        proc = start(tmp_path, route_yaml(bport), args=args)
        processes.append(proc)
        eventually(lambda: get(url("127.0.0.1", proc.admin, "/readyz"))[0] == 200,
                   what="/readyz on 127.0.0.1")
        assert get(url("127.0.0.1", proc.proxy), "demo.test")[0] == 200
        assert seen == ["127.0.0.1"]
        if not HAS_IPV6:
            pytest.skip("this machine has no ::1")
        assert get(url("::1", proc.admin, "/readyz"))[0] == 200
        assert get(url("::1", proc.proxy), "demo.test")[0] == 200
        assert seen == ["127.0.0.1", "::1"]
    finally:
        backend.shutdown()
        backend.server_close()


@needs_ipv6
@pytest.mark.parametrize("interface, other", [("127.0.0.1", "::1"), ("::1", "127.0.0.1")])
def test_an_interface_narrows_every_listener_to_that_address(
        tmp_path, processes, interface, other):
    proc = start(tmp_path, args=["--interface", interface])
    processes.append(proc)
    eventually(lambda: get(url(interface, proc.admin, "/livez"))[0] == 200,
               what=f"/livez on {interface}")
    assert get(url(interface, proc.proxy), "nowhere.test")[0] == 404
    assert refuses(other, proc.admin)
    assert refuses(other, proc.proxy)




# In-process: what a process on this machine cannot show.


def _listener(number, interface=""):
    return app.Listener(reactor, number, Factory.forProtocol(Protocol), "proxy",
                        interface=interface)


@needs_ipv6
@pytest_twisted.inlineCallbacks
def test_the_default_socket_takes_ipv4_whatever_bindv6only_says(monkeypatch):
    """IPV6_V6ONLY is switched off on the socket itself, not left to the
    net.ipv6.bindv6only sysctl (0 on most machines, so the twistd tests
    above would pass without it): here new sockets start as with 1."""
    plain = tcp.Port.createInternetSocket

    def v6only(port):
        skt = plain(port)
        if skt.family == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return skt

    monkeypatch.setattr(tcp.Port, "createInternetSocket", v6only)
    listener = _listener(0)
    listener.startService()
    try:
        skt = listener.port.socket
        assert skt.family == socket.AF_INET6
        assert skt.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        yield listener.stopService()


@pytest_twisted.inlineCallbacks
def test_without_ipv6_the_listener_takes_ipv4_quietly(monkeypatch):
    original = app._Port.createInternetSocket

    def no_ipv6(port):
        if port.addressFamily == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return original(port)

    monkeypatch.setattr(app._Port, "createInternetSocket", no_ipv6)
    events = []
    globalLogPublisher.addObserver(events.append)
    listener = _listener(0)
    try:
        listener.privilegedStartService()
        listener.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        host = listener.port.getHost()
        assert isinstance(host, IPv4Address) and host.host == "0.0.0.0"
        assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
    finally:
        yield listener.stopService()


def test_outside_twistd_the_reason_also_goes_to_stderr(taken_port):
    """C{twist} starts its services before it starts logging: the line
    would be lost, so the exit carries it to stderr."""
    with pytest.raises(app.ListenFailed) as caught:
        _listener(taken_port, "127.0.0.1").startService()
    assert caught.value.code == (f"keda-interceptor: proxy listener: cannot listen on "
                                 f"127.0.0.1 port {taken_port}: Address already in use")


def test_under_twistd_the_logged_line_is_all(taken_port):
    with pytest.raises(app.ListenFailed) as caught:
        _listener(taken_port, "127.0.0.1").privilegedStartService()
    assert caught.value.code == 1
    assert str(caught.value).startswith("proxy listener: cannot listen on 127.0.0.1 port")
