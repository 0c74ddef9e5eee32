"""Many postbacks at once: one event loop for HTTP, per-host caps and scheduled retries.

The calling thread is the scheduler. It pulls jobs lazily from an iterator (so a run over
millions of conversions never sits in memory; at most `max_workers` new jobs a pass),
hands them to the HTTP side host by host, round-robin, and parks retries in a
time-ordered heap instead of sleeping, so a host that answers 503 with `Retry-After`
holds nothing while the other hosts are served.

All callbacks run in the calling thread, which is also the only thread that touches the
database. The HTTP runs on one event loop in a background thread (uvloop where
installed, aiohttp): the scheduler hands it each pass's new attempts in one thread-safe
call, and every outcome comes back on a `queue.SimpleQueue`. The scheduler may hand the
loop up to four times the caps; the loop itself starts at most
`POSTBACK_HOST_CONCURRENCY` attempts to one host (a semaphore per host) and
`POSTBACK_MAX_WORKERS` in all, so it keeps sending while the scheduler thread is busy
loading a chunk or flushing. The session's `limit_per_host` is the same cap, so it holds
for connections as well as for requests. Why not `requests` on worker threads, as
before: each postback cost about 1,000-1,300 µs of CPU on 64 threads, against about
250 µs for aiohttp, and the CPU was the limit.

A synchronous `send` (tests inject them) still runs on worker threads fed by one queue,
with outcomes on another (`queue.SimpleQueue`, a C-level lock each way, rather than
`concurrent.futures.wait`, which locks every pending future on every call).
"""

import asyncio
import contextlib
import gc
import heapq
import inspect
import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from conversions.delivery.retry import backoff_delay
from conversions.delivery.transport import (
    AttemptOutcome,
    PreparedPostback,
    new_async_session,
    send_attempt_async,
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


@dataclass(eq=False)
class _Pending:
    job: Job
    host: str
    attempts: list[AttemptLog] = field(default_factory=list)
    started_at: datetime | None = None


@dataclass(frozen=True)
class EngineSettings:
    max_workers: int
    host_concurrency: int
    max_attempts: int
    retry_base: float
    retry_cap: float
    buffer: int

    @classmethod
    def from_settings(cls, *, share_of: int = 1) -> "EngineSettings":
        """The engine of one of `share_of` workers sharing a run: each keeps to its share
        of the per-host cap, so together they keep to the cap."""
        max_workers = max(1, settings.POSTBACK_MAX_WORKERS)
        return cls(
            max_workers=max_workers,
            host_concurrency=max(1, settings.POSTBACK_HOST_CONCURRENCY // max(1, share_of)),
            max_attempts=max(1, settings.POSTBACK_MAX_ATTEMPTS),
            retry_base=settings.POSTBACK_RETRY_BASE,
            retry_cap=settings.POSTBACK_RETRY_CAP,
            buffer=max(1000, max_workers * 50),
        )


class _Workers:
    """HTTP threads fed by one queue; outcomes come back on another."""

    depth = 1  # a thread starts what it is handed at once
    stopping = False

    def __init__(self, size: int, send: Callable[..., AttemptOutcome], session) -> None:
        self.size = size
        self.send = send
        self.session = session
        self.todo: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[_Pending, AttemptOutcome]] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # read and written by the scheduler thread only

    def submit(self, pending: _Pending) -> None:
        pending.started_at = timezone.now()
        if self.idle == 0 and len(self.threads) < self.size:
            thread = threading.Thread(
                target=self._work, name=f"postback-{len(self.threads)}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        else:
            self.idle -= 1
        self.todo.put(pending)

    def flush(self) -> None:
        pass  # each submit already reached a worker

    def finished(self) -> None:
        """One outcome was taken from `done`: its worker is free again."""
        self.idle += 1

    def _work(self) -> None:
        send, session, todo, done = self.send, self.session, self.todo, self.done
        while (pending := todo.get()) is not None:
            try:
                outcome = send(pending.job.prepared, session=session)
            except Exception as exc:  # send_attempt never raises; this guards a bug in it
                logger.exception("postback transport raised")
                outcome = _internal_error(exc)
            done.put((pending, outcome))

    def stop(self) -> None:
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join()


class _EventLoopWorkers:
    """Attempts as tasks on one event loop in a background thread; same face as _Workers.

    The scheduler hands the loop up to `depth` times the caps, and the loop itself keeps
    to them (a semaphore per host, and one for `max_workers`): while the scheduler
    thread is busy (loading the next chunk, flushing) the loop starts the next attempts
    on its own instead of idling until the scheduler looks again.
    """

    depth = 4

    def __init__(self, send: Callable[..., Any], pool_size: int, max_workers: int) -> None:
        self.send = send
        self.cap = pool_size
        self.done: queue.SimpleQueue[tuple[_Pending, AttemptOutcome | None]] = queue.SimpleQueue()
        # Set by the scheduler on a stop: handed-over attempts not started yet come back
        # unstarted (outcome None) instead of being sent.
        self.stopping = False
        self.loop = new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="postback-loop", daemon=True
        )
        self.thread.start()
        self.tasks: set[asyncio.Task] = set()
        self.batch: list[_Pending] = []
        self.host_slots: dict[str, asyncio.Semaphore] = {}
        try:
            self.session = self._call(self._open(pool_size))
            self.slots = self._call(self._semaphore(max_workers))
        except BaseException:
            self._shut_loop()
            raise

    @staticmethod
    async def _semaphore(size: int) -> asyncio.Semaphore:
        return asyncio.Semaphore(size)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @staticmethod
    async def _open(pool_size: int) -> Any:
        return new_async_session(pool_size=pool_size)

    def submit(self, pending: _Pending) -> None:
        self.batch.append(pending)

    def flush(self) -> None:
        """Hand this pass's attempts to the loop in one wake-up."""
        if self.batch:
            batch, self.batch = self.batch, []
            self.loop.call_soon_threadsafe(self._start, batch)

    def finished(self) -> None:
        pass

    def _start(self, batch: list[_Pending]) -> None:
        for pending in batch:
            task = self.loop.create_task(self._one(pending))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, pending: _Pending) -> None:
        host_slots = self.host_slots.get(pending.host)
        if host_slots is None:
            host_slots = self.host_slots[pending.host] = asyncio.Semaphore(self.cap)
        # The host's slot first: attempts waiting for a busy host hold no global slot.
        async with host_slots, self.slots:
            if self.stopping:
                self.done.put((pending, None))
                return
            pending.started_at = timezone.now()
            try:
                outcome = await self.send(pending.job.prepared, session=self.session)
            except asyncio.CancelledError:
                # Abandoned by a second Ctrl-C: the request may have reached the host,
                # so it is reported (and stored) as an attempt without an answer.
                self.done.put((pending, _abandoned(pending.started_at)))
                raise
            except Exception as exc:  # send_attempt_async never raises; this guards a bug
                logger.exception("postback transport raised")
                outcome = _internal_error(exc)
        self.done.put((pending, outcome))

    async def _close(self) -> None:
        while self.tasks:  # in-flight attempts finish
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.session.close()

    def stop(self) -> None:
        self.flush()
        try:
            self._call(self._close())
        except BaseException:
            # Interrupted while waiting (a second Ctrl-C): abandon what is in flight
            # quietly instead of leaving pending tasks behind a stopped loop.
            self.stopping = True
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(self._abandon(), self.loop).result(5)
            raise
        finally:
            self._shut_loop()

    async def _abandon(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.session.close()

    def _shut_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


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
        send: Callable[..., Any] = send_attempt_async,
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
        with _fewer_collections():
            self._run(jobs, on_done=on_done, on_tick=on_tick, should_stop=should_stop)

    def _run(
        self,
        jobs: Iterable[Job],
        *,
        on_done: Callable[[Job, list[AttemptLog]], None],
        on_tick: Callable[[], None],
        should_stop: Callable[[], bool],
    ) -> None:
        cfg = self.config
        clock = self.clock
        cap = cfg.host_concurrency
        source: Iterator[Job] = iter(jobs)
        exhausted = False
        stopping = False
        ready: dict[str, deque[_Pending]] = {}
        in_flight: dict[str, int] = {}
        # Hosts with a waiting pair and a free slot, each listed once, served round-robin
        # so one busy host cannot starve the others.
        runnable: deque[str] = deque()
        queued_hosts: set[str] = set()
        delayed: list[tuple[float, int, _Pending]] = []
        sequence = itertools.count()
        running = 0
        buffered = 0
        next_tick = clock() + self.tick

        def mark_runnable(host: str) -> None:
            if host not in queued_hosts and ready.get(host) and in_flight.get(host, 0) < host_limit:
                queued_hosts.add(host)
                runnable.append(host)

        def enqueue(pending: _Pending) -> None:
            host = pending.host
            waiting = ready.get(host)
            if waiting is None:
                waiting = ready[host] = deque()
            waiting.append(pending)
            mark_runnable(host)

        workers: _Workers | _EventLoopWorkers
        if _is_async(self.send):
            workers = _EventLoopWorkers(self.send, cap, cfg.max_workers)
        else:
            workers = _Workers(cfg.max_workers, self.send, None)
        # Handed to the workers and not finished yet, per host and in all.
        host_limit = cap * workers.depth
        limit = cfg.max_workers * workers.depth
        try:
            while True:
                now = clock()
                if now >= next_tick:
                    on_tick()
                    stopping = stopping or should_stop()
                    next_tick = now + self.tick
                if stopping:
                    workers.stopping = True
                    buffered -= self._drop_unstarted(ready, delayed, on_done)
                    runnable.clear()
                    queued_hosts.clear()
                # At most `max_workers` new jobs a pass: the first requests leave while
                # later jobs are still being prepared, and the workers sharing a run
                # claim its chunks as they need them, not all at the start.
                intake = cfg.max_workers
                while not exhausted and not stopping and buffered < cfg.buffer and intake:
                    job = next(source, None)
                    if job is None:
                        exhausted = True
                        break
                    buffered += 1
                    intake -= 1
                    enqueue(_Pending(job, job.prepared.host_key))
                while delayed and delayed[0][0] <= now:
                    enqueue(heapq.heappop(delayed)[2])
                if runnable and running < limit:
                    while runnable and running < limit:
                        host = runnable.popleft()
                        queued_hosts.discard(host)
                        pending = ready[host].popleft()
                        in_flight[host] = in_flight.get(host, 0) + 1
                        running += 1
                        workers.submit(pending)
                        mark_runnable(host)
                    workers.flush()
                if not running and not delayed and buffered == 0 and (exhausted or stopping):
                    break

                timeout = max(0.0, next_tick - clock())
                if delayed:
                    timeout = min(timeout, max(0.0, delayed[0][0] - clock()))
                if not running:
                    if timeout:
                        time.sleep(timeout)
                    continue
                try:
                    finished = [workers.done.get(timeout=timeout)]
                except queue.Empty:
                    continue
                # Take every outcome already there: one pass of the loop serves them all.
                while True:
                    try:
                        finished.append(workers.done.get_nowait())
                    except queue.Empty:
                        break
                for pending, outcome in finished:
                    workers.finished()
                    running -= 1
                    host = pending.host
                    in_flight[host] -= 1
                    if outcome is None:  # handed over, then not started: stopping
                        buffered -= 1
                        if pending.attempts:
                            on_done(pending.job, pending.attempts)
                        continue
                    attempt = AttemptLog(len(pending.attempts) + 1, outcome, pending.started_at)
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
                        heapq.heappush(delayed, (clock() + delay, next(sequence), pending))
                    else:
                        buffered -= 1
                        on_done(pending.job, pending.attempts)
                    mark_runnable(host)
            on_tick()
        except BaseException:
            # Ctrl-C or a failure: nothing more is sent, attempts in flight finish, and
            # every pair that was fired is reported (recorded by the caller), even now.
            workers.stopping = True
            try:
                workers.stop()
            finally:
                # Even when the stop itself was interrupted (a second Ctrl-C abandons
                # what is in flight): what was fired is reported.
                self._report_after_abort(workers, ready, delayed, on_done)
            raise
        # No worker thread or event loop outlives the run.
        workers.stop()

    def _report_after_abort(self, workers, ready, delayed, on_done) -> None:
        try:
            while True:
                try:
                    pending, outcome = workers.done.get_nowait()
                except queue.Empty:
                    break
                if outcome is not None:
                    pending.attempts.append(
                        AttemptLog(len(pending.attempts) + 1, outcome, pending.started_at)
                    )
                if pending.attempts:
                    on_done(pending.job, pending.attempts)
            self._drop_unstarted(ready, delayed, on_done)
        except Exception:  # the original exception matters more; this is logged
            logger.exception("reporting the pairs of an aborted run failed")

    @staticmethod
    def _drop_unstarted(ready, delayed, on_done) -> int:
        """On stop: never-fired pairs are dropped; pairs waiting for a retry end now."""
        dropped = 0
        for waiting in ready.values():
            while waiting:
                pending = waiting.popleft()
                dropped += 1
                if pending.attempts:
                    on_done(pending.job, pending.attempts)
        while delayed:
            pending = heapq.heappop(delayed)[2]
            dropped += 1
            on_done(pending.job, pending.attempts)
        return dropped


# Allocations between two young-generation collections while a run delivers.
RUN_GC_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_runs_collecting_less = 0
_threshold_before: tuple[int, ...] = gc.get_threshold()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect cycles less often while delivering.

    A run allocates objects at a high rate and nearly all of them die by reference
    counting; with the default threshold (700 allocations) the cyclic collector ran
    thousands of times a run and, with tens of thousands of live objects to look through,
    took about a tenth of the CPU (benchmark, five runs each: 729 against 834 us per
    postback). Collections still happen, so memory stays bounded.
    """
    global _runs_collecting_less, _threshold_before
    with _gc_lock:  # runs may overlap in one process (request threads): first in, last out
        if _runs_collecting_less == 0:
            _threshold_before = gc.get_threshold()
            gc.set_threshold(max(_threshold_before[0], RUN_GC_THRESHOLD), *_threshold_before[1:])
        _runs_collecting_less += 1
    try:
        yield
    finally:
        with _gc_lock:
            _runs_collecting_less -= 1
            if _runs_collecting_less == 0:
                gc.set_threshold(*_threshold_before)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux, macOS), else asyncio's.

    The HTTP of a run is CPU-bound on the loop thread, and asyncio's pure-Python handles
    and timers were about a sixth of that thread's time in the benchmark's profile;
    uvloop keeps them in C: about 10 % less CPU per postback, measured end to end.
    """
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's loop does the same work, slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _is_async(send: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose `__call__` is one."""
    if inspect.iscoroutinefunction(send):
        return True
    call = type(send).__dict__.get("__call__")
    return call is not None and inspect.iscoroutinefunction(call)


def _abandoned(started_at) -> AttemptOutcome:
    elapsed = (timezone.now() - started_at).total_seconds() if started_at else 0.0
    return _no_answer(
        "abandoned: the run was interrupted before the answer came", int(elapsed * 1000)
    )


def _internal_error(exc: Exception) -> AttemptOutcome:
    return _no_answer(f"internal error: {type(exc).__name__}", 0)


def _no_answer(detail: str, duration_ms: int) -> AttemptOutcome:
    """An attempt that ended without an answer from the host, for a reason of ours."""
    return AttemptOutcome(
        status_code=None,
        error="connection_error",
        error_detail=detail,
        duration_ms=duration_ms,
        response_excerpt="",
        retry_after=None,
    )
