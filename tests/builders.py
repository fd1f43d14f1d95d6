"""Small builders for model values, shared by the tests."""

import textwrap

from keda_proxy.state._model import (
    KIND_CONFIG_MAP,
    KIND_ENDPOINT_SLICE,
    KIND_HTTP_SCALED_OBJECT,
    KIND_INTERCEPTOR_ROUTE,
    KIND_SERVICE,
    ConfigMap,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Route,
    RoutingRule,
    Service,
    ServicePort,
    ServiceRef,
)


def route(name="web", ns="default", service="web", port=0, port_name="http",
          hosts=("example.com",), paths=(), **kw):
    return Route(namespace=ns, name=name,
                 target=ServiceRef(name=service, port=port, port_name=port_name),
                 rules=(RoutingRule(hosts=tuple(hosts), paths=tuple(paths)),), **kw)


def service(name="web", ns="default", ports=(("http", 8080),), cluster_ip="127.0.0.1",
            app_protocol=None):
    """C{app_protocol}: every port's C{appProtocol} (C{kubernetes.io/h2c})."""
    return Service(namespace=ns, name=name, cluster_ip=cluster_ip,
                   ports=tuple(ServicePort(name=n, port=p, app_protocol=app_protocol)
                               for n, p in ports))


def endpoint_slice(service="web", ns="default", name=None, ips=("127.0.0.1",),
                   ports=(("http", 8080),), ready=True):
    return EndpointSlice(
        namespace=ns, name=name or f"{service}-abc", service_name=service,
        endpoints=tuple(Endpoint(addresses=(ip,), ready=ready) for ip in ips),
        ports=tuple(EndpointPort(name=n, port=p) for n, p in ports))


def configmap(name, data, ns="default"):
    return ConfigMap(namespace=ns, name=name, data=dict(data))


def load(store, routes=(), services=(), slices=(), configmaps=()):
    """Replace the store's objects wholesale and rebuild at once."""
    store.replace(KIND_INTERCEPTOR_ROUTE, {r.key: r for r in routes})
    store.replace(KIND_HTTP_SCALED_OBJECT, {})
    store.replace(KIND_SERVICE, {s.key: s for s in services})
    store.replace(KIND_ENDPOINT_SLICE, {s.key: s for s in slices})
    store.replace(KIND_CONFIG_MAP, {c.key: c for c in configmaps})
    return store.flush()


def route_yaml(backend_port: int, host: str = "demo.test", name: str = "demo",
               service: str = "demo") -> str:
    """The manifests of one route to a backend on 127.0.0.1, as a user
    would write them: a Service, its ready EndpointSlice and an
    InterceptorRoute for C{host}."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {service}, namespace: default}}
        spec:
          clusterIP: 127.0.0.1
          ports: [{{name: http, port: {backend_port}}}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {service}-1
          namespace: default
          labels: {{kubernetes.io/service-name: {service}}}
        addressType: IPv4
        endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
        ports: [{{name: http, port: {backend_port}}}]
        ---
        apiVersion: http.keda.sh/v1beta1
        kind: InterceptorRoute
        metadata: {{name: {name}, namespace: default}}
        spec:
          target: {{service: {service}, portName: http}}
          rules: [{{hosts: [{host}]}}]
          scalingMetric: {{concurrency: {{targetValue: 10}}}}
        """)
