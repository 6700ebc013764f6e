"""One request budget per source, shared by every process through the store, that adapts to 429s.

pyrate-limiter supplies the rate model (`Rate`, `Duration`, the sliding-window-log algorithm, `Limiter`);
`StoreBucket` keeps the window's timestamps in the store (compare-and-set), so every invocation on every
machine draws on one budget. Waiting is ours, not the Limiter's blocking mode: it uses the injected sleep and
never waits past the invocation deadline.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from pyrate_limiter import AbstractBucket, Limiter, Rate, RateItem
from pyrate_limiter.limiter import SingleBucketFactory

from common.clock import Clock, Deadline
from common.config import RateSpec, Settings
from common.errors import StoreError
from common.store import SharedState
from common.store.state import update_state

CAS_ATTEMPTS = 50
MAX_STALLED_ROUNDS = 6  # consecutive late answers from the store before giving up on a slot
MIN_FACTOR = 0.1
_ADAPTIVE_START = {"factor": 1.0, "since": 0.0, "blocked_until": 0.0}
RECOVERY_PER_INTERVAL = 0.1  # additive recovery: +10 % of the configured rate per window without a 429


class WindowFull(Exception):
    """No slot before the deadline."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"next request slot in {wait_s:.1f}s is past the invocation deadline")
        self.wait_s = wait_s


class StoreBucket(AbstractBucket):
    """A sliding-window log whose timestamps live in the store under one key (shared by all processes).

    A slot's stamp must not be earlier than the moment its request goes out, or another process would see the slot
    expire before the server does. The request goes out once `put` returns, so `put` stamps after reading the log
    and checks the clock again once the compare-and-set has answered: if the store took longer than
    `tolerance_ms`, the slot is recorded again at a later time (re-validated there) or given back. A steadily slow
    store is met by reserving the slot ahead by the round trip just seen; `ready_at()` is then the earliest moment
    the request may go (the caller sleeps until it). Every recorded stamp s of a sent request therefore satisfies
    send - tolerance <= s <= send.
    """

    is_async = False

    def __init__(self, store: SharedState, key: str, rates: list[Rate], clock: Clock, tolerance_ms: int = 25) -> None:
        self.store, self.key, self.clock, self.tolerance_ms = store, key, clock, tolerance_ms
        self.rates = rates
        self.granted_ms = 0  # the stamp of the last slot this bucket granted
        self.stalled_rounds = 0  # slots recorded again because the store answered late (for the run summary)

    def now(self) -> int:
        return int(self.clock() * 1000)

    def _log(self) -> tuple[list[int], int]:
        state, version = self.store.get_state(self.key)
        return (state or {}).get("log", []), version

    def ready_at(self) -> float:
        """When the request of the last granted slot may go out (seconds since the epoch)."""
        return self.granted_ms / 1000

    def put(self, item: RateItem) -> bool:
        held: list[int] = []  # our stamps already in the stored log, from a round the store answered late
        lead_ms, stalled = 0, 0
        for _ in range(CAS_ATTEMPTS):
            stored, version = self._log()
            item.timestamp = self.now() + lead_ms
            horizon = item.timestamp - max(rate.interval for rate in self.rates)
            log = sorted(stamp for stamp in stored if stamp >= horizon)
            for stamp in held:
                if stamp in log:
                    log.remove(stamp)
            counts = [sum(1 for s in log if s >= self._algorithm.window_start(r, item.timestamp)) for r in self.rates]
            decision = self._algorithm.decide(
                self.rates, counts, item.weight, item.timestamp,
                lambda offset: log[-1 - offset] if offset < len(log) else None,
            )
            if not decision.allowed:
                if held and not self.store.cas_state(self.key, {"log": log}, version):
                    continue  # our stale slot must be given back before we say no
                return self._record(item, decision)
            written = [item.timestamp] * item.weight
            if not self.store.cas_state(self.key, {"log": sorted(log + written)}, version):
                continue  # another process wrote first: read again
            answered = self.now()
            if answered - item.timestamp <= self.tolerance_ms:
                self.granted_ms = item.timestamp
                return self._record(item, decision)
            held, stalled = written, stalled + 1  # the store answered late: this stamp is before the send
            self.stalled_rounds += 1
            if stalled >= MAX_STALLED_ROUNDS:
                raise StoreError(f"rate limiter {self.key}: the store answered late {stalled} times in a row "
                                 f"(last {answered - item.timestamp + lead_ms} ms); no request sent")
            if stalled >= 2:  # not a one-off stall: reserve the slot ahead by the round trip just seen
                lead_ms = min(answered - item.timestamp + lead_ms, max(rate.interval for rate in self.rates))
        raise StoreError(f"rate limiter {self.key}: too much contention ({CAS_ATTEMPTS} compare-and-set retries)")

    def leak(self, current_timestamp: Optional[int] = None) -> int:
        return 0  # entries past the window are dropped on every put

    def flush(self) -> None:
        _, version = self._log()
        self.store.cas_state(self.key, {"log": []}, version)

    def count(self) -> int:
        return len(self._log()[0])

    def peek(self, index: int) -> Optional[RateItem]:
        log = self._log()[0]
        return RateItem(self.key, log[-1 - index]) if index < len(log) else None


class SourceLimiter:
    """The budget of one source: `acquire()` before every request, `penalize()` on a 429."""

    def __init__(self, store: SharedState, source: str, rate: RateSpec, clock: Clock,
                 sleep: Callable[[float], None], safety_ms: int | None = None,
                 max_blocked_s: float = Settings.max_server_wait_s) -> None:
        self.store, self.source, self.rate, self.clock, self.sleep = store, source, rate, clock, sleep
        self.max_blocked_s = max_blocked_s  # no server-requested block lasts longer, whoever stored it
        # arrival jitter on the server side must not turn our N-per-window into N+1 in its window
        self.safety_ms = safety_ms if safety_ms is not None else max(100, rate.interval_ms // 40)
        # a slot's stamp may precede its send by up to a quarter of the padding; the rest stays for arrival jitter
        self.bucket = StoreBucket(store, f"limiter:{source}", [self._rate(1.0)], clock,
                                  tolerance_ms=max(1, self.safety_ms // 4))
        self.limiter = Limiter(SingleBucketFactory(self.bucket, schedule_leak=False))
        self.waited_s = 0.0

    def _rate(self, factor: float) -> Rate:
        return Rate(max(1, math.floor(self.rate.limit * factor)), self.rate.interval_ms + self.safety_ms)

    def _adaptive(self) -> tuple[dict, int]:
        state, version = self.store.get_state(f"adaptive:{self.source}")
        return state or dict(_ADAPTIVE_START), version

    def blocked_until(self, state: dict) -> float:
        """The stored block, bounded by `max_blocked_s` from the 429 that set it (a block stored by an older
        version or another process without the cap heals by itself)."""
        return min(state["blocked_until"], state["since"] + self.max_blocked_s)

    def factor(self, state: dict | None = None) -> float:
        """The share of the configured rate in force now (recovers additively after each 429 halving)."""
        state = state if state is not None else self._adaptive()[0]
        windows = max(0.0, self.clock() - state["since"]) * 1000 / self.rate.interval_ms
        return min(1.0, state["factor"] + RECOVERY_PER_INTERVAL * windows)

    def acquire(self, deadline: Deadline) -> float:
        """Wait for a slot in the shared window; returns the seconds waited. Raises WindowFull instead of
        waiting past the deadline."""
        waited = 0.0
        while True:
            state, _ = self._adaptive()
            blocked = self.blocked_until(state) - self.clock()
            if blocked <= 0:
                self.bucket.rates = [self._rate(self.factor(state))]
                if self.limiter.try_acquire(self.source, blocking=False):
                    ahead = self.bucket.ready_at() - self.clock()  # a slot reserved ahead of a slow store
                    if ahead > 0:
                        if ahead > deadline.remaining() - deadline.margin_s:
                            raise WindowFull(ahead)
                        self.sleep(ahead)
                        waited += ahead
                    self.waited_s += waited
                    return waited
                blocked = max(self.bucket.waiting(RateItem(self.source, self.bucket.now())), 1) / 1000
            if blocked > deadline.remaining() - deadline.margin_s:
                raise WindowFull(blocked)
            self.sleep(blocked)
            waited += blocked

    def penalize(self, retry_after_s: float) -> float:
        """A 429: halve the rate (down to MIN_FACTOR) and block every process until Retry-After has passed
        (at most `max_blocked_s`)."""
        retry_after_s = min(retry_after_s, self.max_blocked_s)

        def halve(state: dict | None) -> dict:
            state = state or dict(_ADAPTIVE_START)
            now = self.clock()
            until = max(min(self.blocked_until(state), now + self.max_blocked_s), now + retry_after_s)
            return {"factor": max(MIN_FACTOR, self.factor(state) / 2), "since": now, "blocked_until": until}

        return update_state(self.store, f"adaptive:{self.source}", halve)["factor"]
