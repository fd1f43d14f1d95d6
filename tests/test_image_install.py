"""
The container image's install, checked without a container engine.

The Dockerfile's steps (``deploy/image.sh wheels``, ``install``, ``finish``)
build a fresh venv from the same build context (``.dockerignore``); the venv
is then made read-only, as under the chart's ``readOnlyRootFilesystem``, and
started exactly as the KEDA HTTP add-on chart starts the interceptor: the
image's ENTRYPOINT, the chart's ``args`` and ``env``.  It must start, route a
request to a backend, answer the chart's probes, stop cleanly on SIGTERM, and
write nothing.

There is no cluster here, so ``--manifests`` gives it its routes; that is
the one argument the chart does not pass.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import netsupport
from tests.builders import route_yaml
from tests.netsupport import free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SH = ROOT / "deploy" / "image.sh"
#: where the Dockerfile puts the venv
IMAGE_VENV = "/opt/keda-interceptor"

#: The interceptor container's ``args``, as the keda-add-ons-http chart
#: (kedacore/charts, http-add-on/templates/interceptor/deployment.yaml, v0.16)
#: renders them with its default values (logging.interceptor.*;
#: stackTracesEnabled false adds no --zap-stacktrace-level).
CHART_ARGS = ["--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339"]

#: The interceptor container's ``env``, as the same chart (v0.16) renders it
#: with its default values, in its order.  Left out because their values are
#: empty by default, so the chart renders no variable: requestTimeout,
#: responseHeaderTimeout, readinessTimeout (and replicas.waitTimeout),
#: tcpConnectTimeout, the tls.* policy ones, tls.caDirs, extraEnvs; with
#: tls.enabled and profiling off, none of their variables.  The chart sets no
#: OTEL_* variable for the interceptor: metrics are on, on port 2223.
CHART_ENV = {
    "KEDA_HTTP_PROXY_PORT": "8080",
    "KEDA_HTTP_ADMIN_PORT": "9090",
    "KEDA_HTTP_MAX_IDLE_CONNS": "1000",
    "KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST": "200",
    "KEDA_HTTP_DIRECT_POD_ROUTING": "true",
    "KEDA_HTTP_COLD_START_MAX_PENDING_REQUESTS": "0",
    "KEDA_HTTP_SHUTDOWN_DELAY": "5s",
    "KEDA_HTTP_DRAIN_TIMEOUT": "30s",
    "KEDA_HTTP_TLS_SKIP_VERIFY": "false",
}

#: the ports the chart declares (containerPort) and probes: name -> number
CHART_PORTS = {"admin": 9090, "proxy": 8080}
#: the chart's probes: (path, port name)
CHART_PROBES = {"liveness": ("/livez", "admin"), "readiness": ("/readyz", "admin")}
#: the chart's terminationGracePeriodSeconds (default value)
CHART_GRACE_SECONDS = 45


# -- the Dockerfile and the build context --------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (KEYWORD, rest), one list per stage."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest.strip()))
    return stages


def final_stage() -> dict:
    """ENTRYPOINT, ENV, USER and EXPOSE of the image (the last stage)."""
    out: dict = {"env": {}, "expose": set()}
    for keyword, rest in dockerfile_stages()[-1]:
        if keyword == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
        elif keyword == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                out["env"][name] = value
        elif keyword == "USER":
            out["user"] = rest
        elif keyword == "EXPOSE":
            out["expose"].update(int(p.split("/")[0]) for p in rest.split())
    return out


def copy_build_context(dest: Path) -> None:
    """Copy what ``.dockerignore`` lets into the build context: its ``!``
    lines, less its ``**/NAME`` exclusions."""
    included, excluded = [], []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            included.append(line[1:].rstrip("/"))
        elif line.startswith("**/"):
            excluded.append(line[3:])
    ignore = shutil.ignore_patterns(*excluded)
    for rel in included:
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)


def image_sh(*args: str) -> None:
    # PYTHON: this suite's interpreter, as python3 is the base image's
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHON"] = sys.executable
    # from the checkout's top, on purpose: its keda_proxy must not be the one
    # the plugin caches are built from
    done = subprocess.run(["sh", str(IMAGE_SH), *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"image.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def tree_state(top: Path) -> dict:
    """path -> (mode, size, mtime_ns) of everything under C{top}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def set_writable(top: Path, writable: bool) -> None:
    """chmod -R a-w (or u+w back) C{top}, symlinks left alone."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, None]:
            path = Path(dirpath) if name is None else Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            path.chmod(mode | 0o200 if writable else mode & ~0o222)


# -- the pieces a pod has ---------------------------------------------------------------


class Backend(http.server.BaseHTTPRequestHandler):
    BODY = b"hello from the image test backend\n"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


def route_manifests(folder: Path, backend_port: int) -> Path:
    folder.mkdir()
    (folder / "demo.yaml").write_text(route_yaml(backend_port))
    return folder


def get(url, host=None, timeout=5.0):
    """(status, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def eventually(check, proc, log: Path, timeout=30.0, what="condition"):
    """L{netsupport.eventually}, failing at once, with the log, if C{proc}
    exits meanwhile."""
    def tail():
        return log.read_text(errors="replace")[-4000:]

    def alive_and_checked():
        if proc.poll() is not None:
            raise AssertionError(
                f"exited with {proc.returncode} while waiting for {what}:\n{tail()}")
        return check()

    return netsupport.eventually(alive_and_checked, timeout, what, step=0.1, describe=tail)


def without_capabilities() -> list[str]:
    """As root, file modes bind nobody: run the interceptor as root without
    any capability (setpriv), so that the read-only venv really is.  In the
    pod it runs as the image's user 65532; that user cannot reach this
    machine's Python (under /root), root without capabilities can."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all"] if setpriv else []


# -- the tests -------------------------------------------------------------------------


def test_dockerfile_matches_the_chart():
    """ENTRYPOINT passes the chart's args through; the chart's ports are
    exposed; a numeric user (runAsNonRoot can only check a number); no
    bytecode written at run time."""
    image = final_stage()
    assert image["entrypoint"] == [f"{IMAGE_VENV}/bin/twistd", "-n", "--pidfile=",
                                   "-r", "keda-epoll", "keda-interceptor"]
    assert set(CHART_PORTS.values()) | {2223} <= image["expose"]
    uid, _, gid = image["user"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit())
    assert image["env"]["PYTHONDONTWRITEBYTECODE"] == "1"
    assert image["env"]["PATH"].startswith(f"{IMAGE_VENV}/bin:")


def test_chart_values_swap_only_the_interceptor_image():
    """deploy/values.yaml: a repository without a tag (the chart appends
    images.tag or its appVersion) and no images.tag (it would retag the
    operator and scaler too); resources with requests <= limits."""
    values = yaml.safe_load((ROOT / "deploy" / "values.yaml").read_text())
    assert set(values) == {"images", "interceptor"}
    assert set(values["images"]) == {"interceptor"}
    repo = values["images"]["interceptor"]
    assert ":" not in repo.rsplit("/", 1)[-1] and "@" not in repo
    resources = values["interceptor"]["resources"]
    assert set(values["interceptor"]) == {"resources"}
    for key in ("cpu", "memory"):
        assert resources["requests"][key] and resources["limits"][key]
    assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(
        resources["limits"]["memory"])


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


def test_kustomize_overlay_swaps_the_image_of_the_upstream_base():
    """deploy/kustomize: the upstream config/interceptor at the v0.16.0 tag
    as a remote base (not vendored), its ko:// image replaced by ours."""
    folder = ROOT / "deploy" / "kustomize"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    (base,) = kustomization["resources"]
    assert base.startswith("https://github.com/kedacore/http-add-on/")
    assert "config/interceptor" in base and base.endswith("ref=v0.16.0")
    (image,) = kustomization["images"]
    assert image["name"] == "ko://github.com/kedacore/http-add-on/interceptor"
    assert image["newName"] == yaml.safe_load(
        (ROOT / "deploy" / "values.yaml").read_text())["images"]["interceptor"]
    assert image["newTag"] == "0.16.0"
    assert sorted(p.name for p in folder.iterdir()) == ["kustomization.yaml"]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """The image's venv, built as the Dockerfile builds it (minus the base
    image's standard library bytecode, which belongs to this machine's
    Python here), then made read-only."""
    top = tmp_path_factory.mktemp("image")
    context, wheels, venv = top / "context", top / "wheels", top / "venv"
    copy_build_context(context)
    image_sh("wheels", str(context), str(wheels))
    image_sh("install", str(wheels), str(venv))
    image_sh("finish", str(venv))
    set_writable(venv, False)
    yield venv
    set_writable(venv, True)


@pytest.mark.skipif(
    os.environ.get("KEDA_TEST_REACTOR", "").strip() not in ("", "default"),
    reason="the image runs twistd's default reactor; this suite's reactor does not matter "
           "here, and the install costs about 30 s")
def test_the_image_install_runs_as_the_chart_starts_it(image_venv, tmp_path):
    venv = image_venv
    site = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip())

    # installed, not linked to this checkout: keda_proxy comes from the venv
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.egg-link"))
    assert (site / "keda_proxy" / "tap.py").is_file()
    assert (site / "twisted" / "plugins" / "keda_interceptor.py").is_file()
    # built at build time: the plugin cache, and bytecode for every module
    for package in (site / "twisted" / "plugins", site / "keda_proxy" / "plugins"):
        if any(p.name != "__init__.py" for p in package.glob("*.py")):
            assert (package / "dropin.cache").is_file(), package
    missing = [str(p) for p in site.rglob("*.py")
               if not Path(importlib.util.cache_from_source(str(p))).is_file()]
    assert not missing, f"{len(missing)} modules without bytecode, e.g. {missing[:3]}"

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    manifests = route_manifests(tmp_path / "manifests", server.server_address[1])
    workdir = tmp_path / "workdir"  # the container's WORKDIR, read-only as well
    workdir.mkdir()
    workdir.chmod(0o555)

    image = final_stage()
    argv = [a.replace(IMAGE_VENV, str(venv)) for a in image["entrypoint"]]
    argv = without_capabilities() + argv + CHART_ARGS + ["--manifests", str(manifests)]
    ports = {"proxy": free_port(), "admin": free_port(), "metrics": free_port()}
    env = {name: value.replace(IMAGE_VENV, str(venv)).replace("$PATH", "/usr/bin:/bin")
           for name, value in image["env"].items()}
    env.update(CHART_ENV, HOME="/nonexistent")
    # free ports instead of 8080/9090/2223, which may be taken on this machine
    env.update(KEDA_HTTP_PROXY_PORT=str(ports["proxy"]),
               KEDA_HTTP_ADMIN_PORT=str(ports["admin"]),
               OTEL_PROM_EXPORTER_PORT=str(ports["metrics"]))
    port_of = {"admin": ports["admin"], "proxy": ports["proxy"]}

    before = tree_state(venv)
    log = tmp_path / "interceptor.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for probe, (path, port) in CHART_PROBES.items():
            url = f"http://127.0.0.1:{port_of[port]}{path}"
            eventually(lambda url=url: get(url)[0] == 200, proc, log, what=f"{probe} {url}")
        status, body = get(f"http://127.0.0.1:{ports['proxy']}/", host="demo.test")
        assert (status, body) == (200, Backend.BODY)
        status, body = get(f"http://127.0.0.1:{ports['proxy']}/", host="nowhere.test")
        assert status == 404
        status, body = get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert status == 200 and b"interceptor_" in body

        # SIGTERM, as the kubelet sends it: out within the grace period
        # (twistd ends a clean shutdown by re-raising the signal it got)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=CHART_GRACE_SECONDS) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
        workdir.chmod(0o755)

    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert "Server Shut Down." in output, output
    assert "Unable to write to plugin cache" not in output, output
    # zap console lines, RFC 3339 times, as the chart's args ask
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\tINFO\t", output, re.M), output
    # nothing written: no bytecode, no cache, no pid file
    assert tree_state(venv) == before
    assert list(workdir.iterdir()) == []
