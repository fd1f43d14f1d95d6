"""
A measuring probe for keda-interceptor under load (``bench_burst.py
--loop-stats``); nothing in the product imports it.

Python imports ``sitecustomize`` at start-up from the first directory on
``sys.path`` that has one: with this directory on ``PYTHONPATH`` and
``KEDA_LOOP_STATS=FILE`` set, the interceptor's process is instrumented
from the outside, and SIGUSR2 appends one JSON line of statistics to FILE
(everything since the previous SIGUSR2; the first one only resets):

- reactor turns: how long each turn's work took (poll return to the next
  poll call: dispatch plus timed calls), how many events each served, and
  of which kind (accepts, client reads, upstream reads, writes, other);
- per request (from the request path's entry to its end): how far into its turn it was started (the
  time it waited behind other work of the same turn), the time until it
  had an upstream connection, the upstream's time until its response
  arrived, and the time from that to the response's end;
- the upstream pool: idle connections taken, dials, idle connections
  closed (by the bounds or by age), the most idle at once;
- garbage collector pauses, per generation.

Without ``KEDA_LOOP_STATS`` it does nothing at all.
"""

from __future__ import annotations

import json
import os
import signal
import time

_OUT = os.environ.get("KEDA_LOOP_STATS")


def _pct(values, q):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


class _Stats:
    def __init__(self):
        self.turn_start = time.perf_counter()
        self.reset()

    def reset(self):
        self.started = time.perf_counter()
        self.turn_busy = []
        self.turn_off_cpu = []  # wall time of a turn not spent on the CPU
        self.accepts_per_turn = []
        self.turn_events = []
        self.kinds = {"accept": 0, "client_read": 0, "upstream_read": 0, "write": 0,
                      "other": 0}
        self.accepted = 0
        self.req_pos = []  # start - turn start
        self.req_pool = []  # connection in hand - start
        self.req_upstream = []  # response arrived - connection in hand
        self.req_write = []  # finished - response arrived
        self.req_total = []  # finished - turn start of the read
        self.pool = {"take_hit": 0, "take_miss": 0, "dials": 0, "closed_idle": 0,
                     "released": 0, "max_idle": 0}
        self.gc_pauses = {0: [], 1: [], 2: []}

    def dump(self):
        def summary(values, scale=1e3):
            return {"n": len(values), "p50": round(_pct(values, 0.5) * scale, 3),
                    "p99": round(_pct(values, 0.99) * scale, 3),
                    "max": round((max(values) if values else 0) * scale, 3),
                    "mean": round((sum(values) / len(values) if values else 0) * scale, 3)}

        wall = time.perf_counter() - self.started
        out = {
            "wall_s": round(wall, 3),
            "turns": len(self.turn_busy),
            "busy_share": round(sum(self.turn_busy) / wall, 3) if wall else 0,
            "turn_ms": summary(self.turn_busy),
            "turn_off_cpu_ms": summary(self.turn_off_cpu),
            "accepts_per_turn": summary(self.accepts_per_turn, 1),
            "events_per_turn": summary(self.turn_events, 1),
            "events": self.kinds,
            "req_pos_in_turn_ms": summary(self.req_pos),
            "req_pool_ms": summary(self.req_pool),
            "req_upstream_ms": summary(self.req_upstream),
            "req_write_ms": summary(self.req_write),
            "req_in_proxy_ms": summary(self.req_total),
            "pool": self.pool,
            "gc_ms": {str(g): summary(v) for g, v in self.gc_pauses.items()},
        }
        with open(_OUT, "a") as f:
            f.write(json.dumps(out) + "\n")
        self.reset()


def _install():
    from twisted.internet import base

    stats = _Stats()
    clock = time.perf_counter
    original = base.ReactorBase.startRunning

    def startRunning(self, *a, **kw):
        _wrap_reactor(self, stats, clock)
        _count_accepts(stats)
        _wrap_proxy(stats, clock)
        first = [True]

        def on_signal(signum, frame):
            if first[0]:
                first[0] = False
                stats.reset()
            else:
                stats.dump()

        signal.signal(signal.SIGUSR2, on_signal)
        _watch_gc(stats, clock)
        return original(self, *a, **kw)

    base.ReactorBase.startRunning = startRunning


def _watch_gc(stats, clock):
    import gc

    began = [0.0]

    def callback(phase, info):
        if phase == "start":
            began[0] = clock()
        else:
            stats.gc_pauses[info["generation"]].append(clock() - began[0])

    gc.callbacks.append(callback)


def _wrap_reactor(reactor, stats, clock):
    poller = getattr(reactor, "_poller", None)
    if poller is None:
        return
    from twisted.internet import tcp

    selectables = reactor._selectables
    state = {"ret": None, "cpu": 0.0}
    cpu = time.process_time

    class Poller:
        def __getattr__(self, name):
            return getattr(poller, name)

        def poll(self, timeout=-1, maxevents=-1):
            now, now_cpu = clock(), cpu()
            if state["ret"] is not None:
                stats.turn_busy.append(now - state["ret"])
                stats.turn_off_cpu.append(max(0.0, (now - state["ret"]) - (now_cpu - state["cpu"])))
            events = poller.poll(timeout, maxevents)
            state["cpu"] = cpu()
            stats.turn_start = state["ret"] = clock()
            if stats.accepted:
                stats.accepts_per_turn.append(stats.accepted)
                stats.accepted = 0
            if events:
                stats.turn_events.append(len(events))
                kinds = stats.kinds
                for fd, ev in events:
                    s = selectables.get(fd)
                    if ev & 4:  # EPOLLOUT
                        kinds["write"] += 1
                    elif isinstance(s, tcp.Port):
                        kinds["accept"] += 1
                    elif isinstance(s, tcp.Server):
                        kinds["client_read"] += 1
                    elif isinstance(s, tcp.Client):
                        kinds["upstream_read"] += 1
                    else:
                        kinds["other"] += 1
            return events

    reactor._poller = Poller()


def _count_accepts(stats):
    from twisted.internet import tcp

    init = tcp.Server.__init__

    def counting(self, *a, **kw):
        stats.accepted += 1
        return init(self, *a, **kw)

    tcp.Server.__init__ = counting


def _wrap_proxy(stats, clock):
    try:
        from keda_proxy.steps import _forward, _path, _route
        from keda_proxy.upstream import _pool as poolmod
    except ImportError:
        return
    # the first step and the end, looked up per request (the listeners hold
    # Pipeline.serve itself, bound before the reactor starts)
    Route, Pipeline, Attempt = _route.RouteRequest, _path.Pipeline, _forward._Attempt
    route, finished = Route.handle, Pipeline._finished
    connected, whole, head = Attempt._connected, Attempt.response_whole, Attempt.response_head
    #: id(downstream) -> [start, turn start, connected, upstream answered]
    marks = {}

    def p_route(self, context):
        t = clock()
        marks[id(context.downstream)] = [t, stats.turn_start, None, None]
        stats.req_pos.append(t - stats.turn_start)
        return route(self, context)

    def p_connected(self, conn, target):
        m = marks.get(id(self.downstream))
        if m is not None and m[2] is None:
            m[2] = t = clock()
            stats.req_pool.append(t - m[0])
        return connected(self, conn, target)

    def mark_upstream(self):
        m = marks.get(id(self.downstream))
        if m is not None and m[2] is not None and m[3] is None:
            m[3] = t = clock()
            stats.req_upstream.append(t - m[2])

    def p_whole(self, h, body):
        mark_upstream(self)
        return whole(self, h, body)

    def p_head(self, h):
        mark_upstream(self)
        return head(self, h)

    def p_finished(self, context, result):
        m = marks.pop(id(context.downstream), None)
        if m is not None and m[3] is not None and result is None:
            t = clock()
            stats.req_write.append(t - m[3])
            stats.req_total.append(t - m[1])
        return finished(self, context, result)

    Route.handle, Pipeline._finished = p_route, p_finished
    Attempt._connected, Attempt.response_whole, Attempt.response_head = \
        p_connected, p_whole, p_head

    Pool = poolmod.ConnectionPool
    take, connect, release, close = Pool.take_idle, Pool.connect, Pool._release, \
        Pool._close

    def p_take(self, key, has_body=False):
        conn = take(self, key, has_body)
        stats.pool["take_hit" if conn is not None else "take_miss"] += 1
        return conn

    def p_connect(self, key, budget):
        stats.pool["dials"] += 1
        return connect(self, key, budget)

    def p_release(self, key, conn):
        ps = stats.pool
        ps["released"] += 1
        release(self, key, conn)
        ps["max_idle"] = max(ps["max_idle"], len(self._idle_order))

    def p_close(self, conn):
        stats.pool["closed_idle"] += 1
        return close(self, conn)

    Pool.take_idle, Pool.connect, Pool._release, Pool._close = p_take, p_connect, \
        p_release, p_close


if _OUT:
    _install()
