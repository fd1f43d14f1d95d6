"""
Writing a kubeconfig that points the real ``kubernetes`` client at a fake
API server (plain HTTP on loopback, no credentials).
"""

from __future__ import annotations

import os

import yaml


def kubeconfig_dict(server_url: str, namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {
            "cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }


def write_kubeconfig(path: str | os.PathLike, server_url: str) -> str:
    """Write a kubeconfig for C{server_url} to C{path}; return the path."""
    with open(path, "w") as f:
        yaml.safe_dump(kubeconfig_dict(server_url), f)
    return os.fspath(path)
