"""Many postbacks at once: a thread pool, per-host caps and scheduled retries.

The calling thread is the scheduler. It pulls jobs lazily from an iterator (so a run over
millions of conversions never sits in memory), hands at most
`POSTBACK_HOST_CONCURRENCY` attempts per destination host to the pool at a time, and
parks retries in a time-ordered heap instead of sleeping in a worker thread, so a host
that answers 503 with `Retry-After` holds no thread while the other hosts are served.

All callbacks run in the calling thread, which is also the only thread that touches the
database; the pool threads only do HTTP.

One `requests.Session` is shared by the pool: its adapter keeps at most the host cap of
connections per host (`pool_block`), which is what makes the cap hold for connections
as well as for requests in flight.
"""

import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from conversions.delivery.retry import backoff_delay
from conversions.delivery.transport import (
    AttemptOutcome,
    PreparedPostback,
    new_session,
    send_attempt,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    key: Hashable
    prepared: PreparedPostback


@dataclass(frozen=True)
class AttemptLog:
    attempt_number: int
    outcome: AttemptOutcome
    started_at: datetime


@dataclass
class _Pending:
    job: Job
    attempts: list[AttemptLog] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.job.prepared.host_key


@dataclass(frozen=True)
class EngineSettings:
    max_workers: int
    host_concurrency: int
    max_attempts: int
    retry_base: float
    retry_cap: float
    buffer: int

    @classmethod
    def from_settings(cls) -> "EngineSettings":
        max_workers = max(1, settings.POSTBACK_MAX_WORKERS)
        return cls(
            max_workers=max_workers,
            host_concurrency=max(1, settings.POSTBACK_HOST_CONCURRENCY),
            max_attempts=max(1, settings.POSTBACK_MAX_ATTEMPTS),
            retry_base=settings.POSTBACK_RETRY_BASE,
            retry_cap=settings.POSTBACK_RETRY_CAP,
            buffer=max(1000, max_workers * 50),
        )


class DeliveryEngine:
    """Deliver jobs; report each finished pair through `on_done(job, attempts)`.

    `on_tick()` is called at least every `tick` seconds (flushes, heartbeats, cancel
    checks); when `should_stop()` turns true no new pair is started, pairs waiting for a
    retry end with the attempts they had, and in-flight attempts finish.
    """

    def __init__(
        self,
        config: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        send: Callable[..., AttemptOutcome] = send_attempt,
        tick: float = 0.5,
    ) -> None:
        self.config = config or EngineSettings.from_settings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.send = send
        self.tick = tick

    def run(
        self,
        jobs: Iterable[Job],
        *,
        on_done: Callable[[Job, list[AttemptLog]], None],
        on_tick: Callable[[], None] = lambda: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        cfg = self.config
        source: Iterator[Job] = iter(jobs)
        exhausted = False
        stopping = False
        ready: dict[str, deque[_Pending]] = {}
        in_flight: dict[str, int] = {}
        runnable: deque[str] = deque()
        queued_hosts: set[str] = set()
        delayed: list[tuple[float, int, _Pending]] = []
        sequence = itertools.count()
        futures: dict[Future, tuple[_Pending, datetime]] = {}
        buffered = 0
        next_tick = self.clock() + self.tick

        def mark_runnable(host: str) -> None:
            if (
                host not in queued_hosts
                and ready.get(host)
                and in_flight.get(host, 0) < cfg.host_concurrency
            ):
                queued_hosts.add(host)
                runnable.append(host)

        def enqueue(pending: _Pending) -> None:
            ready.setdefault(pending.host, deque()).append(pending)
            mark_runnable(pending.host)

        session = new_session(pool_size=cfg.host_concurrency)
        with ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="postback") as pool:
            try:
                while True:
                    now = self.clock()
                    if now >= next_tick:
                        on_tick()
                        stopping = stopping or should_stop()
                        next_tick = now + self.tick
                    if stopping:
                        buffered -= self._drop_unstarted(ready, delayed, on_done)
                        runnable.clear()
                        queued_hosts.clear()
                    while not exhausted and not stopping and buffered < cfg.buffer:
                        job = next(source, None)
                        if job is None:
                            exhausted = True
                            break
                        buffered += 1
                        enqueue(_Pending(job))
                    while delayed and delayed[0][0] <= now:
                        enqueue(heapq.heappop(delayed)[2])
                    while runnable and len(futures) < cfg.max_workers:
                        host = runnable.popleft()
                        queued_hosts.discard(host)
                        pending = ready[host].popleft()
                        in_flight[host] = in_flight.get(host, 0) + 1
                        future = pool.submit(self.send, pending.job.prepared, session=session)
                        futures[future] = (pending, timezone.now())
                        mark_runnable(host)
                    if not futures and not delayed and buffered == 0 and (exhausted or stopping):
                        break

                    timeout = max(0.0, next_tick - self.clock())
                    if delayed:
                        timeout = min(timeout, max(0.0, delayed[0][0] - self.clock()))
                    if not futures:
                        time.sleep(timeout) if timeout else None
                        continue
                    done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
                    for future in done:
                        pending, started = futures.pop(future)
                        in_flight[pending.host] -= 1
                        outcome = _result(future)
                        attempt = AttemptLog(len(pending.attempts) + 1, outcome, started)
                        pending.attempts.append(attempt)
                        if (
                            outcome.retryable
                            and attempt.attempt_number < cfg.max_attempts
                            and not stopping
                        ):
                            delay = backoff_delay(
                                attempt.attempt_number,
                                retry_after=outcome.retry_after,
                                base=cfg.retry_base,
                                cap=cfg.retry_cap,
                                rng=self.rng,
                            )
                            heapq.heappush(delayed, (self.clock() + delay, next(sequence), pending))
                        else:
                            buffered -= 1
                            on_done(pending.job, pending.attempts)
                        mark_runnable(pending.host)
                on_tick()
            finally:
                session.close()

    @staticmethod
    def _drop_unstarted(ready, delayed, on_done) -> int:
        """On stop: never-fired pairs are dropped; pairs waiting for a retry end now."""
        dropped = 0
        for queue in ready.values():
            while queue:
                pending = queue.popleft()
                dropped += 1
                if pending.attempts:
                    on_done(pending.job, pending.attempts)
        while delayed:
            pending = heapq.heappop(delayed)[2]
            dropped += 1
            on_done(pending.job, pending.attempts)
        return dropped


def _result(future: Future) -> AttemptOutcome:
    try:
        return future.result()
    except Exception as exc:  # send_attempt never raises; this guards a bug in it
        logger.exception("postback transport raised")
        return AttemptOutcome(
            status_code=None,
            error="connection_error",
            error_detail=f"internal error: {type(exc).__name__}",
            duration_ms=0,
            response_excerpt="",
            retry_after=None,
        )
