"""
The simulated pod and the simulated kube-proxy for ``bench_cold_start.py``.

Run as a child process:

    python benchmarks/coldstart_pod.py --port P [--pod 127.0.0.2] [--service 127.0.0.3]

- It listens on the pod address ``--pod:P`` at once and prints ``READY``.
- The Service address ``--service:P`` refuses connections (nothing listens
  there) until it is told ``ARM <t>`` on stdin, where ``<t>`` is a
  ``time.monotonic()`` instant (the clock is system-wide, so the parent's
  instants mean the same here).  At ``<t>`` the same server starts listening
  on the Service address too, as if kube-proxy had just programmed the
  ClusterIP, and prints ``SERVICE_UP <monotonic time>``.
- ``STATS`` prints one JSON line: connections accepted and requests answered
  on each address, and when the Service address came up.
- End of stdin stops it.
- ``--no-pod`` leaves the pod address to another server (``bench_cold_start.py
  --pod nginx``); only the Service address is served here.

Every request (an HTTP/1.1 head without a body) gets ``200`` with a 12-byte
body and a Content-Length, on a keep-alive connection; pipelined heads are
answered in order.  The protocol is a raw Twisted one: no twisted.web, so
that the backend costs little next to the interceptor under test.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

from twisted.internet import reactor, stdio
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver

BODY = b"hello, pod!\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
#: as many pending connections as the kernel allows (net.core.somaxconn caps it)
BACKLOG = 65535


class Pod(Protocol):
    def connectionMade(self):
        self.buf = b""
        self.factory.connections += 1
        try:
            self.transport.setTcpNoDelay(True)
        except OSError:
            pass

    def dataReceived(self, data):
        buf = self.buf + data
        out = []
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            buf = buf[i + 4:]
            out.append(RESPONSE)
        self.buf = buf
        if out:
            self.factory.requests += len(out)
            self.transport.write(b"".join(out))


class Counting(Factory):
    protocol = Pod
    noisy = False

    def __init__(self):
        self.connections = 0
        self.requests = 0


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, args, pod: Counting, service: Counting):
        self.args = args
        self.pod = pod
        self.service = service
        self.service_up = None
        self.armed = None

    def lineReceived(self, line):
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "ARM" and self.armed is None:
            self.armed = float(arg)
            reactor.callLater(max(0.0, self.armed - time.monotonic()), self.open_service)
        elif cmd == "STATS":
            self.say(json.dumps({
                "pod": {"connections": self.pod.connections, "requests": self.pod.requests},
                "service": {"connections": self.service.connections,
                            "requests": self.service.requests},
                "service_up": self.service_up,
                "armed": self.armed,
            }))

    def open_service(self):
        reactor.listenTCP(self.args.port, self.service, backlog=BACKLOG,
                          interface=self.args.service)
        self.service_up = time.monotonic()
        self.say(f"SERVICE_UP {self.service_up:.6f}")

    def say(self, text):
        self.transport.write(text.encode() + b"\n")

    def connectionLost(self, reason):
        if reactor.running:
            reactor.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pod", default="127.0.0.2")
    ap.add_argument("--service", default="127.0.0.3")
    ap.add_argument("--no-pod", action="store_true",
                    help="serve only the Service address (another server is the pod)")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Nothing may listen on the Service address before ARM.
    probe = socket.socket()
    try:
        probe.bind((args.service, args.port))
    except OSError as e:
        sys.exit(f"{args.service}:{args.port} is taken: {e}")
    finally:
        probe.close()
    pod, service = Counting(), Counting()
    if not args.no_pod:
        reactor.listenTCP(args.port, pod, backlog=BACKLOG, interface=args.pod)
    control = Control(args, pod, service)
    stdio.StandardIO(control)
    control.say("READY")
    reactor.run()


if __name__ == "__main__":
    main()
