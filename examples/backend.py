"""
A tiny demo backend for `make run`: answers with what it received, so you
can see what the interceptor forwards, and streams slowly on /slow.

    python examples/backend.py --port 18080
"""

import argparse
import json
import sys

from twisted.internet import reactor, task
from twisted.python import log
from twisted.web import resource, server


class Echo(resource.Resource):
    isLeaf = True

    def render(self, request):
        if request.path.startswith(b"/slow"):
            return self._slow(request)
        body = request.content.read()
        info = {
            "message": "hello from the demo backend",
            "method": request.method.decode(),
            "path": request.uri.decode("latin-1"),
            "host": (request.getHeader(b"host") or b"").decode("latin-1"),
            "headers": {k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body_bytes": len(body),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(info, indent=2).encode() + b"\n"

    def _slow(self, request):
        """Five lines, one every half second: watch them arrive one by one."""
        request.setHeader(b"content-type", b"text/plain")
        lines = iter(range(1, 6))

        def tick():
            try:
                n = next(lines)
            except StopIteration:
                loop.stop()
                if not request.finished and not request._disconnected:
                    request.finish()
                return
            if not request._disconnected:
                request.write(f"line {n}\n".encode())

        loop = task.LoopingCall(tick)
        loop.start(0.5)
        request.notifyFinish().addErrback(lambda _: loop.running and loop.stop())
        return server.NOT_DONE_YET


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args()
    log.startLogging(sys.stdout)
    site = server.Site(Echo())
    site.log = lambda request: None
    reactor.listenTCP(args.port, site, interface=args.interface)
    reactor.run()


if __name__ == "__main__":
    main()
