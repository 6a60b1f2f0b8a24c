#!/usr/bin/env python3
"""A discrete-event model of `scripts/bench herd` (examples/herd.rs), to compare pacing rules in
seconds instead of 13-minute runs. It models what the bench runs: per agent the sink's retries
(full jitter, 200 ms doubling to 60 s), the shipper's windows (one batch per stream with a
backlog, three streams in parallel, the next window once all were accepted; a batch per stream
every 30 s), the credential rotator (refresh at half-life +-10 %, full-jitter retries to 60 s,
tightened near expiry) and the per-node pace (token bucket, 1 call/s, burst 5, start-up spread
30 s), with or without the slow start after an outage (src/telemetry/pace.rs). It prints the
peak-to-mean of calls per second in the minute after recovery (SSM + Logs, Logs, SSM).

Usage: herd-model.py [N=2000] [outage=600] [slow=1] [floor=0.1] [burst=3] [k=2] [lo=120] [hi=600]
                     [min_stretch=10] [seed=1]
The model's figures are in docs/measurements.md "Fleet herd after an outage"; the bench is the
measurement, the model only ranks rules before one is built."""
import collections
import heapq
import random
import sys


class Sim:
    def __init__(self, N=2000, outage=600, warm=60, log_every=30, rate=1.0, node_burst=5,
                 spread=30, seed=1, lat=0.005, slow=1, floor=0.1, burst=3, k=2.0, lo=120,
                 hi=600, min_stretch=10):
        self.N, self.outage, self.warm, self.log_every = N, outage, warm, log_every
        self.rate, self.node_burst, self.spread, self.lat = rate, node_burst, spread, lat
        self.slow, self.floor, self.burst, self.k, self.lo, self.hi = slow, floor, burst, k, lo, hi
        self.min_stretch = min_stretch
        self.rnd = random.Random(seed)
        self.ev, self.seq = [], 0
        self.w0, self.w1 = warm, warm + outage
        self.rec = self.w1 + 1
        self.per = {"all": collections.Counter(), "logs": collections.Counter(),
                    "ssm": collections.Counter()}

    def at(self, t, f, *args):
        self.seq += 1
        heapq.heappush(self.ev, (t, self.seq, f, args))

    def up(self, t):
        return not (self.w0 <= t < self.w1)

    def count(self, t, kind):
        s = int(t)
        if self.rec <= s < self.rec + 60:
            self.per["all"][s - self.rec] += 1
            self.per[kind][s - self.rec] += 1

    def run(self):
        for _ in range(self.N):
            Agent(self)
        end = self.rec + 62
        while self.ev:
            t, _, f, args = heapq.heappop(self.ev)
            if t > end:
                break
            f(t, *args)

        def p2m(c):
            xs = [c[i] for i in range(60)]
            m = sum(xs) / 60
            return round(max(xs) / m, 2) if m else 0.0
        return {k: p2m(v) for k, v in self.per.items()}, [self.per["all"][i] for i in range(60)]


class Agent:
    def __init__(self, s):
        self.s = s
        self.start = s.rnd.random() * s.spread
        self.tat = self.start
        self.failing = False
        self.failing_since = None
        self.slow_from = None
        self.ramp = 0.0
        self.backlog = [0, 0, 0]
        self.next_fill = s.rnd.random() * s.log_every
        self.pending = 0
        self.exp = None
        s.at(0.0, self.window)
        s.at(self.start, self.ssm, 0)

    def acquire(self, now):
        s = self.s
        if self.failing and self.failing_since is None:
            self.failing_since = now
        if not self.failing and self.failing_since is not None:
            stretch = now - self.failing_since
            self.failing_since = None
            if s.slow and stretch >= s.min_stretch:
                self.slow_from = now
                self.ramp = min(max(stretch * s.k, s.lo), s.hi)
                self.tat = max(now, self.start)
        rate, burst = s.rate, s.node_burst
        if self.slow_from is not None:
            el = now - self.slow_from
            if el < self.ramp:
                rate = s.rate * (s.floor + (1 - s.floor) * el / self.ramp)
                burst = min(burst, s.burst)
            else:
                self.slow_from = None
        interval = 1.0 / rate
        tat = max(self.tat, now)
        allowed = max(tat - interval * (burst - 1), self.start)
        self.tat = tat + interval
        return max(allowed, now)

    def put(self, now, k, attempt):
        self.s.at(self.acquire(now), self.call, k, attempt)

    def call(self, t, k, attempt):
        s = self.s
        s.count(t, "logs")
        if s.up(t):
            self.failing = False
            self.pending -= 1
            if self.pending == 0:
                s.at(t + s.lat, self.window_done)
        else:
            self.failing = True
            ceiling = min(60.0, 0.2 * 2 ** min(attempt, 31))
            s.at(t + s.lat + ceiling * s.rnd.random(), self.put, k, attempt + 1)

    def window(self, now):
        s = self.s
        while now >= self.next_fill:
            self.backlog = [b + 1 for b in self.backlog]
            self.next_fill += s.log_every
        streams = [k for k, b in enumerate(self.backlog) if b > 0]
        if not streams:
            s.at(self.next_fill, self.window)
            return
        self.pending = len(streams)
        for k in streams:
            self.put(now, k, 0)

    def window_done(self, now):
        self.backlog = [max(0, b - 1) for b in self.backlog]
        self.window(now)

    def ssm(self, now, attempt):
        s = self.s
        s.count(now, "ssm")
        life = max(s.outage, 60)
        if s.up(now):
            self.exp = now + life
            s.at(now + life * 0.5 * (1 + 0.1 * (2 * s.rnd.random() - 1)), self.ssm, 0)
            return
        remaining = self.exp - now if self.exp and self.exp > now else None
        d = min(60.0, 2 ** min(attempt, 31)) * s.rnd.random()
        d = max(min(d, remaining / 4), 0.25) if remaining else max(d, 1.0)
        s.at(now + d, self.ssm, attempt + 1)


if __name__ == "__main__":
    kw = {}
    for a in sys.argv[1:]:
        key, _, v = a.partition("=")
        kw[key] = float(v) if "." in v else int(v)
    p2m, per_sec = Sim(**kw).run()
    print(f"{kw}: peak-to-mean SSM+Logs {p2m['all']}, Logs {p2m['logs']}, SSM {p2m['ssm']}")
    print("per second:", " ".join(map(str, per_sec)))
