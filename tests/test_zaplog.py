"""
The zap flags the KEDA HTTP add-on chart passes (``--zap-log-level``,
``--zap-encoder``, ``--zap-time-encoding``, ``--zap-stacktrace-level``, and
controller-runtime's ``--zap-devel``), and the log lines they ask for.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from twisted.application.service import Application, IService, Service
from twisted.logger import ILogObserver, Logger
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from keda_proxy.ops import _zaplog as zaplog
from keda_proxy.ops._zaplog import (
    DEBUG,
    ERROR,
    INFO,
    PANIC,
    WARN,
    LoggingTo,
    ZapConfig,
    ZapObserver,
    config_from_options,
    encode_time,
    log_request,
    with_zap_logging,
)
from keda_proxy.state._model import Route, ServiceRef
from keda_proxy.tap import Options
from tests.netsupport import free_port

UTC = timezone.utc
#: 2023-11-14T22:13:20.123456Z
T = 1_700_000_000.123456


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


# -- option parsing ------------------------------------------------------

VALID = [
    ("zap-log-level", "debug", DEBUG),
    ("zap-log-level", "info", INFO),
    ("zap-log-level", "error", ERROR),
    ("zap-log-level", "panic", PANIC),
    ("zap-log-level", "INFO", INFO),
    ("zap-log-level", "1", -1),
    ("zap-log-level", "5", -5),
    ("zap-encoder", "json", "json"),
    ("zap-encoder", "console", "console"),
    ("zap-encoder", "JSON", "json"),
    ("zap-time-encoding", "epoch", "epoch"),
    ("zap-time-encoding", "millis", "millis"),
    ("zap-time-encoding", "nano", "nano"),
    ("zap-time-encoding", "nanos", "nano"),
    ("zap-time-encoding", "iso8601", "iso8601"),
    ("zap-time-encoding", "rfc3339", "rfc3339"),
    ("zap-time-encoding", "RFC3339Nano", "rfc3339nano"),
    ("zap-stacktrace-level", "info", INFO),
    ("zap-stacktrace-level", "error", ERROR),
    ("zap-stacktrace-level", "panic", PANIC),
]


@pytest.mark.parametrize("form", ["equals", "separate"])
@pytest.mark.parametrize("flag,text,value", VALID)
def test_valid_flag_values_in_both_forms(flag, text, value, form):
    argv = [f"--{flag}={text}"] if form == "equals" else [f"--{flag}", text]
    options = parse(*argv)
    assert options[flag] == value
    for other in zaplog.FLAGS:
        if other != flag:
            assert options[other] is None


def test_go_single_dash_spelling_is_accepted():
    options = parse("-zap-log-level=error", "-zap-encoder", "json")
    assert (options["zap-log-level"], options["zap-encoder"]) == (ERROR, "json")


INVALID = [
    ("zap-log-level", "verbose"),
    ("zap-log-level", "warn"),  # controller-runtime has no "warn" log level
    ("zap-log-level", "0"),
    ("zap-log-level", "-2"),
    ("zap-log-level", "1.5"),
    ("zap-encoder", "xml"),
    ("zap-encoder", ""),
    ("zap-time-encoding", "unix"),
    ("zap-stacktrace-level", "debug"),
    ("zap-stacktrace-level", "warn"),
]


@pytest.mark.parametrize("form", ["equals", "separate"])
@pytest.mark.parametrize("flag,text", INVALID)
def test_invalid_value_stops_with_one_line_naming_flag_and_value(flag, text, form, capsys):
    argv = [f"--{flag}={text}"] if form == "equals" else [f"--{flag}", text]
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"keda-interceptor: invalid value for --{flag}: \"{text}\" (")


@pytest.mark.parametrize("argv,expected", [
    ([], None),
    (["--zap-devel"], True),
    (["--zap-devel=true"], True),
    (["--zap-devel=false"], False),
    (["--zap-devel=0"], False),
    (["--zap-devel=false", "--zap-devel"], True),
    (["--zap-devel", "--zap-devel=F"], False),
])
def test_zap_devel_is_a_flag_with_go_boolean_values(argv, expected):
    assert parse(*argv)["zap-devel"] is expected


def test_invalid_zap_devel_value_stops_with_one_line(capsys):
    with pytest.raises(SystemExit):
        parse("--zap-devel=maybe")
    assert capsys.readouterr().err == (
        'keda-interceptor: invalid value for --zap-devel: "maybe" '
        '(expected a boolean such as "true" or "false")\n')


def test_other_options_still_parse_next_to_zap_flags():
    options = parse("--zap-log-level", "info", "--proxy-port", "8080", "--manifests", "m.yaml")
    assert (options["proxy-port"], options["manifests"]) == (8080, "m.yaml")


def test_no_zap_flag_means_no_zap_config():
    assert config_from_options(parse()) is None
    assert config_from_options(parse("--proxy-port", "1")) is None


def test_defaults_are_the_go_interceptors_development_mode():
    """The chart's default arguments: Go runs in development mode (set in
    its main.go), so stack traces come from warn up."""
    config = config_from_options(parse("--zap-log-level=info", "--zap-encoder=console",
                                       "--zap-time-encoding=rfc3339"))
    assert config == ZapConfig(encoder="console", level=INFO, stacktrace_level=WARN,
                               time_encoding="rfc3339")
    assert config_from_options(parse("--zap-devel")) == ZapConfig(
        encoder="console", level=DEBUG, stacktrace_level=WARN, time_encoding="rfc3339")


def test_production_mode_defaults():
    assert config_from_options(parse("--zap-devel=false")) == ZapConfig(
        encoder="json", level=INFO, stacktrace_level=ERROR, time_encoding="rfc3339")


def test_help_lists_the_zap_flags():
    text = str(Options())
    for flag in zaplog.FLAGS:
        assert f"--{flag}" in text


# -- the observer -------------------------------------------------------

def observe(config=None, tz=UTC, when=T, namespace="keda_proxy.state._manifests"):
    """A Logger whose events (at time C{when}) go to a ZapObserver, and the
    function that returns the lines written so far."""
    out = io.StringIO()
    zap = ZapObserver(config or ZapConfig(encoder="json"), out, tz=tz)

    def at_fixed_time(event):
        event["log_time"] = when
        zap(event)

    log = Logger(namespace=namespace, observer=at_fixed_time)
    return log, lambda: out.getvalue().splitlines()


@pytest.mark.parametrize("encoding,expected", [
    ("epoch", 1700000000.123456),
    ("millis", 1700000000123.456),
    ("nano", 1700000000123456000),
    ("iso8601", "2023-11-14T22:13:20.123Z"),
    ("rfc3339", "2023-11-14T22:13:20Z"),
    ("rfc3339nano", "2023-11-14T22:13:20.123456Z"),
])
def test_json_line_shape_for_each_time_encoding(encoding, expected):
    log, lines = observe(ZapConfig(encoder="json", time_encoding=encoding))
    log.info("loaded {count} file(s) from {path}", count=2, path="m.yaml")
    (line,) = lines()
    record = json.loads(line)
    assert list(record) == ["level", "ts", "logger", "msg", "count", "path"]
    assert record == {"level": "info", "ts": expected, "logger": "manifests",
                      "msg": "loaded 2 file(s) from m.yaml", "count": 2, "path": "m.yaml"}
    assert type(record["ts"]) is type(expected)
    assert line.startswith('{"level":"info","ts":')  # zap's compact JSON


@pytest.mark.parametrize("encoding,expected", [
    ("iso8601", "2023-11-15T03:43:20.123+0530"),
    ("rfc3339", "2023-11-15T03:43:20+05:30"),
    ("rfc3339nano", "2023-11-15T03:43:20.123456+05:30"),
])
def test_string_time_encodings_carry_the_zone_offset(encoding, expected):
    assert encode_time(T, encoding, timezone(timedelta(hours=5, minutes=30))) == expected


@pytest.mark.parametrize("when,expected", [
    (1_700_000_000.0, "2023-11-14T22:13:20Z"),
    (1_700_000_000.5, "2023-11-14T22:13:20.5Z"),
    (1_700_000_000.00001, "2023-11-14T22:13:20.00001Z"),
])
def test_rfc3339nano_trims_trailing_zeros_as_go_does(when, expected):
    assert encode_time(when, "rfc3339nano", UTC) == expected


def test_iso8601_truncates_to_milliseconds():
    assert encode_time(1_700_000_000.9999, "iso8601", UTC) == "2023-11-14T22:13:20.999Z"


@pytest.mark.parametrize("method,level", [
    ("debug", "debug"), ("info", "info"), ("warn", "warn"), ("error", "error"),
    ("critical", "error"),
])
def test_twisted_levels_map_to_zap_levels(method, level):
    log, lines = observe(ZapConfig(encoder="json", level=DEBUG))
    getattr(log, method)("x")
    assert json.loads(lines()[0])["level"] == level


@pytest.mark.parametrize("config_level,kept", [
    (-3, ["debug", "info", "warn", "error"]),
    (DEBUG, ["debug", "info", "warn", "error"]),
    (INFO, ["info", "warn", "error"]),
    (ERROR, ["error"]),
    (PANIC, []),
])
def test_events_below_the_log_level_are_dropped(config_level, kept):
    log, lines = observe(ZapConfig(encoder="json", level=config_level))
    for method in ("debug", "info", "warn", "error"):
        getattr(log, method)(method)
    assert [json.loads(line)["msg"] for line in lines()] == kept


def fail_now():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        return Failure()


def test_failure_at_error_carries_a_stacktrace_and_the_error():
    log, lines = observe(ZapConfig(encoder="json", stacktrace_level=ERROR))
    log.failure("{route}: upstream failed", fail_now(), route="default/demo")
    record = json.loads(lines()[0])
    assert list(record)[-1] == "stacktrace"
    assert record["level"] == "error"
    assert record["msg"] == "default/demo: upstream failed"
    assert record["route"] == "default/demo"
    assert record["error"] == "division by zero"
    assert "Traceback" in record["stacktrace"]
    assert "ZeroDivisionError" in record["stacktrace"]
    assert "fail_now" in record["stacktrace"]


def test_no_stacktrace_below_the_stacktrace_level():
    log, lines = observe(ZapConfig(encoder="json", stacktrace_level=PANIC))
    log.failure("upstream failed", fail_now())
    log.failure("retrying", fail_now(), level=zaplog.LogLevel.warn)
    log, more = observe(ZapConfig(encoder="json", stacktrace_level=ERROR))
    log.failure("retrying", fail_now(), level=zaplog.LogLevel.warn)
    for line in lines() + more():
        record = json.loads(line)
        assert "stacktrace" not in record
        assert record["error"] == "division by zero"


def test_no_stacktrace_without_a_failure():
    log, lines = observe(ZapConfig(encoder="json", stacktrace_level=INFO))
    log.error("plain error")
    assert "stacktrace" not in json.loads(lines()[0])


def test_legacy_log_err_uses_why_as_message_with_the_stacktrace():
    out = io.StringIO()
    zap = ZapObserver(ZapConfig(encoder="json", stacktrace_level=ERROR), out, tz=UTC)
    event = {"message": (), "time": T, "isError": 1, "failure": fail_now(),
             "why": "Unhandled error in Deferred:", "system": "-"}
    publishToNewObserver(zap, event, legacy_log.textFromEventDict)
    record = json.loads(out.getvalue())
    assert record["msg"] == "Unhandled error in Deferred:"
    assert record["logger"] == "twisted"
    assert record["level"] == "error"
    assert "ZeroDivisionError" in record["stacktrace"]
    assert not {"message", "time", "isError", "failure", "why", "system"} & set(record)


def test_fields_that_are_not_json_are_left_out():
    log, lines = observe()
    log.info("x", text="a", n=1, f=0.5, ok=True, none=None, items=[1, "b"], mapping={"k": 1},
             obj=object(), raw=b"bytes", nan=float("nan"), inf=float("-inf"),
             ts="shadowing", msg="shadowing", stacktrace="shadowing")
    record = json.loads(lines()[0])
    assert {k: v for k, v in record.items() if k not in ("ts", "level", "logger", "msg")} == {
        "text": "a", "n": 1, "f": 0.5, "ok": True, "none": None, "items": [1, "b"],
        "mapping": {"k": 1}, "nan": "NaN", "inf": "-Inf"}
    assert (record["level"], record["msg"]) == ("info", "x")
    assert not any(key.startswith("log_") for key in record)


def test_one_line_per_event_even_when_the_message_has_newlines():
    log, lines = observe()
    log.info("first\nsecond")
    assert json.loads(lines()[0])["msg"] == "first\nsecond"
    assert len(lines()) == 1


@pytest.mark.parametrize("namespace,name", [
    ("keda_proxy.state._manifests", "manifests"),
    ("keda_proxy.LoggingMiddleware", "LoggingMiddleware"),
    ("twisted.internet.base", "twisted"),
    ("stdout", "stdout"),
])
def test_logger_names(namespace, name):
    log, lines = observe(namespace=namespace)
    log.info("x")
    assert json.loads(lines()[0])["logger"] == name


def test_console_line_shape():
    log, lines = observe(ZapConfig(encoder="console", time_encoding="rfc3339"))
    log.info("loaded {count} file(s)", count=2, path="m.yaml")
    log.warn("no fields")
    first, second = lines()
    assert first.split("\t") == ["2023-11-14T22:13:20Z", "INFO", "manifests",
                                 "loaded 2 file(s)", '{"count": 2, "path": "m.yaml"}']
    assert second.split("\t") == ["2023-11-14T22:13:20Z", "WARN", "manifests", "no fields"]


def test_console_epoch_time_is_a_plain_number():
    log, lines = observe(ZapConfig(encoder="console", time_encoding="epoch"))
    log.info("x")
    assert lines()[0].split("\t")[0] == "1700000000.123456"


def test_console_stacktrace_follows_the_line():
    log, lines = observe(ZapConfig(encoder="console", stacktrace_level=ERROR))
    log.failure("boom", fail_now())
    written = lines()
    head = written[0].split("\t")
    assert head[1:4] == ["ERROR", "manifests", "boom"]
    assert json.loads(head[4]) == {"error": "division by zero"}
    assert written[1].startswith("Traceback")
    assert "ZeroDivisionError" in written[-1]


def test_text_the_output_cannot_encode_is_escaped():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    zap = ZapObserver(ZapConfig(encoder="json"), out, tz=UTC)
    Logger(observer=zap).info("caf\u00e9 {x}", x="\udcff")
    record = json.loads(raw.getvalue().decode("ascii"))
    assert record["msg"] == "caf\u00e9 \udcff"


def test_observer_is_an_ilogobserver():
    assert ILogObserver.providedBy(ZapObserver(ZapConfig(), io.StringIO()))


# -- twistd wiring -------------------------------------------------------

def test_without_zap_flags_the_service_is_returned_as_is():
    service = Service()
    assert with_zap_logging(service, parse()) is service


def test_with_zap_flags_the_application_gets_the_zap_observer():
    """twistd asks the application for an ILogObserver before it begins
    logging: with zap flags, that is the zap observer."""
    inner = Service()
    wrapped = with_zap_logging(inner, parse("--zap-encoder=json"), out=io.StringIO())
    assert isinstance(wrapped, LoggingTo)
    application = Application("keda-interceptor")
    wrapped.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert isinstance(observer, ZapObserver)
    assert observer.config.encoder == "json"
    IService(application).startService()
    assert inner.running
    IService(application).stopService()
    assert not inner.running


# -- request logs -------------------------------------------------------

class FakeDownstream:
    """The parts of an IDownstreamExchange a request log line reads."""

    method = b"GET"
    path = b"/hello"
    version = b"HTTP/1.1"
    client_address = "10.0.0.7"
    client_port = 51234
    code = 200
    sent_bytes = 17
    headers = {b"User-Agent": [b"curl/8"]}


def test_request_log_fields():
    log, lines = observe(namespace="keda_proxy.LoggingMiddleware")
    route = Route(namespace="default", name="demo", target=ServiceRef(name="demo", port=80))
    log_request(FakeDownstream(), started=T, finished=T + 0.25, route=route, cold_start=True,
                logger=log)
    record = json.loads(lines()[0])
    assert record["logger"] == "LoggingMiddleware"
    assert record["level"] == "info"
    assert record["method"] == "GET"
    assert record["path"] == "/hello"
    assert record["status"] == 200
    assert record["duration"] == pytest.approx(0.25)
    assert record["route"] == "default/demo"
    assert record["cold_start"] is True
    assert record["bytes"] == 17
    assert re.fullmatch(r'10\.0\.0\.7:51234 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        r'"GET /hello HTTP/1\.1" 200 17 "" "curl/8"', record["msg"]), record["msg"]


def test_request_log_without_a_route():
    log, lines = observe(namespace="keda_proxy.LoggingMiddleware")
    request = FakeDownstream()
    request.code = 404
    log_request(request, started=T, finished=T, logger=log)
    record = json.loads(lines()[0])
    assert (record["status"], record["route"], record["cold_start"]) == (404, "", None)


# -- the real twistd -------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "keda-interceptor"]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)")


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def run_twistd(tmp_path, zap_args):
    """Start the real interceptor with C{zap_args}, wait until it is ready,
    stop it; (exit status, stdout, stderr)."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "m.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Service
        metadata: {name: demo, namespace: default}
        spec:
          clusterIP: 127.0.0.1
          ports: [{name: http, port: 9}]
        """))
    admin = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEDA_", "KUBE"))}
    env.update(KEDA_HTTP_PROXY_PORT=str(free_port()), KEDA_HTTP_ADMIN_PORT=str(admin),
               OTEL_PROM_EXPORTER_ENABLED="false", KEDA_HTTP_SHUTDOWN_DELAY="0s")
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen(TWISTD + zap_args + ["--manifests", str(tmp_path / "manifests")],
                                env=env, cwd=tmp_path, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 15
            while _status(f"http://127.0.0.1:{admin}/readyz") != 200:
                assert proc.poll() is None, "interceptor exited"
                assert time.monotonic() < deadline, "interceptor not ready"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def test_real_twistd_with_the_charts_zap_arguments_logs_zap_json(tmp_path):
    """What the chart passes, with ``logging.interceptor.format: json`` and
    stack traces on; one option in the separate-value form."""
    status, out, err = run_twistd(tmp_path, [
        "--zap-log-level=info", "--zap-encoder", "json", "--zap-time-encoding=rfc3339",
        "--zap-stacktrace-level=error"])
    assert status in (0, -signal.SIGTERM), err
    lines = out.splitlines()
    assert len(lines) >= 3, out
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record)[:4] == ["level", "ts", "logger", "msg"]
        assert record["level"] in ("info", "warn", "error")
        assert RFC3339.fullmatch(record["ts"]), record
    assert any(r["logger"] == "app" and "admin listening" in r["msg"] and r["name"] == "admin"
               for r in records), out
    assert any(r["logger"] == "manifests" for r in records), out


def test_real_twistd_with_the_charts_default_values_logs_zap_console(tmp_path):
    """The chart's default values: info, console, rfc3339."""
    status, out, err = run_twistd(tmp_path, [
        "--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339"])
    assert status in (0, -signal.SIGTERM), err
    lines = out.splitlines()
    assert len(lines) >= 3, out
    for line in lines:
        ts, level, name, _msg, *fields = line.split("\t")
        assert RFC3339.fullmatch(ts), line
        assert level in ("INFO", "WARN", "ERROR"), line
        assert name, line
        for extra in fields:
            json.loads(extra)
    assert any("\tapp\tadmin listening" in line for line in lines), out
