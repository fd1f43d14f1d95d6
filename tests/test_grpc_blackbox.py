"""
Black box: gRPC through the installed ``twistd keda-interceptor``, run on
manifests whose Service port declares ``appProtocol: kubernetes.io/h2c``.
A real grpcio client speaks h2c to the proxy's one plain port; a real
grpcio server (h2c only) answers behind it.
"""

from __future__ import annotations

import json
import textwrap

import grpc
import pytest

from tests.grpcpeers import H2C, PeerClient, PeerServer, stream_and_status
from tests.netsupport import eventually
from tests.test_twistd import Interceptor, http

HOST = "grpc.test"


def grpc_manifests(port: int) -> str:
    """A Service with an h2c port, its ready EndpointSlice and a route."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: grpc, namespace: default}}
        spec:
          clusterIP: 127.0.0.1
          ports: [{{name: grpc, port: {port}, appProtocol: {H2C}}}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: grpc-1
          namespace: default
          labels: {{kubernetes.io/service-name: grpc}}
        addressType: IPv4
        endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
        ports: [{{name: grpc, port: {port}}}]
        ---
        apiVersion: http.keda.sh/v1beta1
        kind: InterceptorRoute
        metadata: {{name: grpc, namespace: default}}
        spec:
          target: {{service: grpc, portName: grpc}}
          rules: [{{hosts: [{HOST}]}}]
          scalingMetric: {{concurrency: {{targetValue: 10}}}}
        """)


@pytest.fixture
def server():
    s = PeerServer()
    s.start()
    yield s
    s.stop()


def test_grpc_through_twistd_with_an_h2c_service_port(tmp_path, server):
    (tmp_path / "grpc.yaml").write_text(grpc_manifests(server.port))
    ic = Interceptor(tmp_path, tmp_path / "grpc.yaml")
    client = None
    try:
        try:
            ic.ready()
        except AssertionError as e:
            raise AssertionError(f"{e}; its log:\n{ic.output()[-3000:]}") from None
        client = PeerClient.plain(ic.proxy, authority=HOST)
        try:
            assert client.echo(b"through twistd", timeout=10) == b"through twistd"
            got, status = stream_and_status(client.count, b"2:PERMISSION_DENIED:not you",
                                            timeout=10)
        except grpc.RpcError as e:
            raise AssertionError(f"{e}; its log:\n{ic.output()[-3000:]}") from None
        assert got == [b"0", b"1"]
        assert status == (grpc.StatusCode.PERMISSION_DENIED, "not you")
        assert [m for m, _, _ in server.calls] == ["Echo", "Count"]

        def queue():
            body = json.loads(http(f"http://127.0.0.1:{ic.admin}/queue")[2])
            return body if body["default/grpc"]["Concurrency"] == 0 else None

        assert eventually(queue, timeout=10, what="Concurrency 0") == {
            "default/grpc": {"Concurrency": 0, "RequestCount": 2}}
    finally:
        if client is not None:
            client.close()
        ic.stop()
