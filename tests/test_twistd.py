"""
Black-box tests of the installed ``twistd keda-interceptor``: real
processes, real sockets, plain HTTP from the standard library.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.builders import route_yaml
from tests.netsupport import eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def twistd(reactor=None):
    """The command line up to the plugin's options; C{reactor} is a
    C{twistd -r} name, or None for twistd's default (epoll on Linux)."""
    return [str(BIN / "twistd"), "-n", "--pidfile=",
            *(["-r", reactor] if reactor else []), "keda-interceptor"]


#: what the black-box tests start: KEDA_TEST_REACTOR=keda-epoll (see
#: conftest.py) runs them on that reactor too
SUITE_REACTOR = os.environ.get("KEDA_TEST_REACTOR", "").strip() or None
if SUITE_REACTOR == "default":
    SUITE_REACTOR = None
TWISTD = twistd(SUITE_REACTOR)


def http(url, host=None, timeout=5.0):
    """(status, headers, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def manifest(backend_port, host="demo.test", name="demo"):
    return route_yaml(backend_port, host, name)


@pytest.fixture
def backend():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "backend.py"),
                             "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: http(f"http://127.0.0.1:{port}/")[0] == 200, what="backend")
        yield port
    finally:
        proc.kill()
        proc.wait()


class Interceptor:
    def __init__(self, tmp_path, manifests_path, extra_env=None, argv=TWISTD):
        self.proxy, self.admin = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEDA_", "KUBE"))}
        env.update(KEDA_HTTP_PROXY_PORT=str(self.proxy), KEDA_HTTP_ADMIN_PORT=str(self.admin),
                   OTEL_PROM_EXPORTER_ENABLED="false", KEDA_HTTP_SHUTDOWN_DELAY="0s")
        env.update(extra_env or {})
        self.log = open(tmp_path / "interceptor.log", "w+")
        self.proc = subprocess.Popen(argv + ["--manifests", str(manifests_path)],
                                     env=env, cwd=tmp_path, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.proxy}{path}"

    def ready(self):
        eventually(lambda: http(f"http://127.0.0.1:{self.admin}/readyz")[0] == 200,
                   what="/readyz 200")
        return self

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def run(tmp_path):
    started = []

    def start(manifests_path, argv=TWISTD, **env):
        ic = Interceptor(tmp_path, manifests_path, env, argv)
        started.append(ic)
        return ic

    yield start
    for ic in started:
        ic.stop()


def test_routes_counts_and_answers_404(tmp_path, backend, run):
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml").ready()
    status, headers, body = http(ic.url("/hello?x=1"), host="demo.test")
    assert status == 200
    echoed = json.loads(body)
    assert echoed["path"] == "/hello?x=1"
    assert echoed["host"] == "demo.test"
    assert headers["X-KEDA-HTTP-Cold-Start"] == "false"
    assert http(ic.url(), host="other.test")[0] == 404
    status, headers, body = http(f"http://127.0.0.1:{ic.admin}/queue")
    assert json.loads(body) == {"default/demo": {"Concurrency": 0, "RequestCount": 1}}
    assert http(f"http://127.0.0.1:{ic.admin}/livez")[0] == 200


def test_streams_a_slow_response_line_by_line(tmp_path, backend, run):
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml").ready()
    req = urllib.request.Request(ic.url("/slow"), headers={"Host": "demo.test"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        t0 = time.monotonic()
        first = resp.readline()
        first_at = time.monotonic() - t0
        rest = resp.read()
        total = time.monotonic() - t0
    assert first == b"line 1\n"
    assert rest == b"line 2\nline 3\nline 4\nline 5\n"
    # the first line arrived well before the body was complete (2+ s)
    assert first_at < total - 1.0


def test_manifest_changes_apply_and_a_broken_file_keeps_the_last_good_state(
        tmp_path, backend, run):
    path = tmp_path / "m.yaml"
    path.write_text(manifest(backend))
    ic = run(path).ready()
    assert http(ic.url(), host="new.test")[0] == 404
    path.write_text(manifest(backend, host="new.test"))
    eventually(lambda: http(ic.url(), host="new.test")[0] == 200, what="new host routed")
    path.write_text(manifest(backend, host="newer.test") + "\n  broken: [unclosed\n")
    eventually(lambda: re.search(r"m\.yaml:\d+:\d+: YAML syntax error", ic.output()),
               what="the error logged with file, line and column")
    assert http(ic.url(), host="new.test")[0] == 200  # last good state still serving
    assert http(ic.url(), host="newer.test")[0] == 404


def test_invalid_env_value_stops_startup_with_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
    env.update(KEDA_HTTP_PROXY_PORT="8080", KEDA_HTTP_ADMIN_PORT="9090",
               KEDA_HTTP_CONNECT_TIMEOUT="5 seconds")
    proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "KEDA_HTTP_CONNECT_TIMEOUT" in lines[0] and "5 seconds" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_sigterm_drains_and_exits_promptly(tmp_path, backend, run):
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml", KEDA_HTTP_DRAIN_TIMEOUT="2s").ready()
    t0 = time.monotonic()
    ic.proc.send_signal(signal.SIGTERM)
    # twistd re-raises the signal after a clean shutdown, as POSIX asks
    assert ic.proc.wait(timeout=10) in (0, -signal.SIGTERM)
    assert "Server Shut Down" in ic.output()
    assert time.monotonic() - t0 < 5


def test_tls_listener_starts_and_serves(tmp_path, run):
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("proxy.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    (tmp_path / "m.yaml").write_text("")
    tls_port = free_port()
    ic = run(tmp_path / "m.yaml", KEDA_HTTP_PROXY_TLS_ENABLED="true",
             KEDA_HTTP_PROXY_TLS_PORT=str(tls_port),
             KEDA_HTTP_PROXY_TLS_CERT_PATH=str(tmp_path / "tls.crt"),
             KEDA_HTTP_PROXY_TLS_KEY_PATH=str(tmp_path / "tls.key")).ready()
    ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    req = urllib.request.Request(f"https://127.0.0.1:{tls_port}/",
                                 headers={"Host": "nowhere.example"})
    ctx.check_hostname = False  # the certificate names proxy.example, we dial an IP
    try:
        urllib.request.urlopen(req, context=ctx, timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 404
    else:
        raise AssertionError("expected a 404")
    assert http(ic.url(), host="nowhere.example")[0] == 404  # plain listener too


def test_tls_with_a_missing_key_stops_startup_with_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDA_")}
    env.update(KEDA_HTTP_PROXY_PORT=str(free_port()), KEDA_HTTP_ADMIN_PORT=str(free_port()),
               KEDA_HTTP_PROXY_TLS_ENABLED="true",
               KEDA_HTTP_PROXY_TLS_CERT_PATH=str(tmp_path / "missing.crt"))
    proc = subprocess.run(TWISTD + ["--manifests", str(tmp_path / "m.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "KEDA_HTTP_PROXY_TLS_CERT_PATH" in lines[0], proc.stderr


def test_sigterm_lets_a_request_in_flight_finish(tmp_path, backend, run):
    import threading

    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml", KEDA_HTTP_DRAIN_TIMEOUT="20s").ready()
    result = {}

    def slow():
        req = urllib.request.Request(ic.url("/slow"), headers={"Host": "demo.test"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            result["body"] = resp.read()

    t = threading.Thread(target=slow)
    t.start()
    eventually(lambda: json.loads(http(f"http://127.0.0.1:{ic.admin}/queue")[2])
               ["default/demo"]["Concurrency"] == 1, what="the slow request in flight")
    ic.proc.send_signal(signal.SIGTERM)
    t.join(timeout=20)
    assert result.get("body") == b"line 1\nline 2\nline 3\nline 4\nline 5\n"
    assert ic.proc.wait(timeout=10) in (0, -signal.SIGTERM)


def test_shutdown_delay_turns_readyz_503_while_still_serving(tmp_path, backend, run):
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml", KEDA_HTTP_SHUTDOWN_DELAY="3s").ready()
    ic.proc.send_signal(signal.SIGTERM)
    eventually(lambda: http(f"http://127.0.0.1:{ic.admin}/readyz")[0] == 503,
               what="/readyz 503 while draining")
    assert http(ic.url(), host="demo.test")[0] == 200  # traffic still served
    assert ic.proc.wait(timeout=15) in (0, -signal.SIGTERM)


# The reactor: twistd's own unless asked for (``-r keda-epoll``)

def reactor_class(ic):
    found = re.search(r"reactor class: ([\w.]+)\.", ic.output())
    assert found, ic.output()
    return found.group(1)


def test_the_default_start_runs_on_twistds_reactor_unchanged(tmp_path, backend, run):
    """Nothing swaps the reactor at run time: twistd logs the class it
    runs after the service is made, and it is still the stock epoll one."""
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml", argv=twistd()).ready()
    assert http(ic.url(), host="demo.test")[0] == 200
    assert reactor_class(ic) == "twisted.internet.epollreactor.EPollReactor"


def test_the_keda_epoll_reactor_is_a_twistd_reactor_plugin(tmp_path, backend, run):
    (tmp_path / "m.yaml").write_text(manifest(backend))
    ic = run(tmp_path / "m.yaml", argv=twistd("keda-epoll")).ready()
    assert http(ic.url(), host="demo.test")[0] == 200
    assert reactor_class(ic) == "keda_proxy.epolldispatch.LeanEPollReactor"


def test_the_reactor_plugin_is_listed_and_takes_the_plugin_options():
    listed = subprocess.run([str(BIN / "twistd"), "--help-reactors"], capture_output=True,
                            text=True, timeout=60)
    assert re.search(r"^\s+keda-epoll\s", listed.stdout, re.M), listed.stdout
    helped = subprocess.run(twistd("keda-epoll") + ["--help"], capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "--manifests=" in helped.stdout


# The runner: pytest, not trial

#: what ``trial tests`` says, and fails with
NOT_TRIAL = ("this suite is written for pytest (plain functions and fixtures), which trial "
             "does not collect: run `make test` (both reactors) or `.venv/bin/python -m "
             "pytest`, see README.md")


def testSuite():
    """Trial's hook for a module's tests (L{twisted.trial.runner.TestLoader.loadModule}):
    trial loads every ``test_*`` module of ``tests`` and, finding no
    C{TestCase}, would report PASSED having run nothing.  From this module
    it loads one test that fails with L{NOT_TRIAL} instead.  pytest never
    calls it (C{__test__ = False}); the test below checks that trial does."""
    from twisted.trial.unittest import SynchronousTestCase

    class UsePytest(SynchronousTestCase):
        def test_use_pytest(self):
            self.fail(NOT_TRIAL)

    return UsePytest("test_use_pytest")


testSuite.__test__ = False


def test_trial_fails_loudly_instead_of_passing_with_no_tests(tmp_path):
    ran = subprocess.run([str(BIN / "trial"), "--temp-directory", str(tmp_path / "trial"),
                          "tests"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = ran.stdout + ran.stderr
    assert ran.returncode != 0, out
    assert "FAILED" in out and "make test" in out, out
    assert "Ran 1 tests" in out, out  # this module's, and nothing else passed unnoticed
