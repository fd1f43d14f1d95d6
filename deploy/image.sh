#!/bin/sh
# The install steps of the container image, kept in one place so that the
# Dockerfile and tests/test_image_install.py run the very same commands.
#
#   deploy/image.sh wheels SRC WHEELS   build keda-interceptor's wheel from the source tree
#                                       SRC (non-editable) and the wheels of its
#                                       dependencies, pinned by SRC/requirements-pins.txt
#   deploy/image.sh install WHEELS VENV a new venv VENV holding keda-interceptor and its
#                                       dependencies, from WHEELS only (no index); no pip
#   deploy/image.sh finish VENV         bytecode for everything in VENV, then Twisted's
#                                       plugin caches: afterwards the interceptor starts
#                                       without writing a file (read-only root filesystem)
#
# PYTHON (default python3) runs venv and pip; VENV's own interpreter runs the
# rest, isolated (-I): a keda_proxy in the current folder must not stand in for
# the installed one.
set -eu
PYTHON=${PYTHON:-python3}

case "${1:-}" in
wheels)
    src=$2 wheels=$3
    "$PYTHON" -m pip wheel --quiet --no-cache-dir --wheel-dir "$wheels" \
        --constraint "$src/requirements-pins.txt" "$src"
    ;;
install)
    wheels=$2 venv=$3
    "$PYTHON" -m venv --without-pip "$venv"
    # pip runs from PYTHON against the new venv: the venv itself needs no pip;
    # bytecode is left to finish (compileall, in parallel)
    "$PYTHON" -m pip --python "$venv/bin/python" install --quiet --no-cache-dir --no-compile \
        --no-index --find-links "$wheels" keda-interceptor
    ;;
finish)
    venv=$2 py="$2/bin/python"
    site=$("$py" -I -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # PYTHONDONTWRITEBYTECODE=1 at run time: whatever is not compiled now is
    # compiled again, in memory, at every start
    "$py" -I -m compileall -q -j 0 "$site"
    # Twisted rewrites a plugin folder's dropin.cache when a module there is
    # not older than it; an image layer keeps file times to the second, so
    # leave a full second between the modules and their cache
    sleep 1
    # twistd finds keda-interceptor (and keda-epoll) in twisted.plugins;
    # routing plugins are looked up in keda_proxy.plugins (run finish again
    # after adding a plugin module there)
    "$py" -I -c 'from twisted.plugin import IPlugin, getPlugins
import twisted.plugins, keda_proxy.plugins
for package in (twisted.plugins, keda_proxy.plugins):
    list(getPlugins(IPlugin, package))'
    ;;
*)
    echo "usage: $0 wheels SRC WHEELS | install WHEELS VENV | finish VENV" >&2
    exit 2
    ;;
esac
