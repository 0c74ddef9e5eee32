"""The scheduler: per-host caps, scheduled retries, stopping. HTTP is replaced by a
function here because what is under test is the scheduling; the transport has its own
tests against real receivers."""

import asyncio
import threading
import time
from collections import Counter, defaultdict

import pytest

from conversions.delivery.engine import DeliveryEngine, EngineSettings, Job
from conversions.delivery.transport import AttemptOutcome, PreparedPostback


def prepared(host: str, n: int) -> PreparedPostback:
    return PreparedPostback(
        method="GET",
        url=f"http://{host}/pb?n={n}",
        masked_url=f"http://{host}/pb?n={n}",
        body=None,
        event_id=f"e{n}",
        host_key=f"http://{host}",
    )


def outcome(status: int | None, *, error: str | None = None, retry_after=None) -> AttemptOutcome:
    return AttemptOutcome(
        status_code=status,
        error=error if error else (None if status and 200 <= status < 300 else "http_status"),
        error_detail="",
        duration_ms=1,
        response_excerpt="",
        retry_after=retry_after,
    )


def config(**kw) -> EngineSettings:
    defaults = dict(
        max_workers=16,
        host_concurrency=3,
        max_attempts=3,
        retry_base=0.01,
        retry_cap=0.05,
        buffer=1000,
    )
    return EngineSettings(**{**defaults, **kw})


class ConcurrencyProbe:
    def __init__(self, delay: float = 0.01):
        self.delay = delay
        self.lock = threading.Lock()
        self.now: Counter = Counter()
        self.peak: Counter = Counter()
        self.calls: Counter = Counter()

    def __call__(self, prepared: PreparedPostback, *, session) -> AttemptOutcome:
        host = prepared.host_key
        with self.lock:
            self.now[host] += 1
            self.calls[host] += 1
            self.peak[host] = max(self.peak[host], self.now[host])
        time.sleep(self.delay)
        with self.lock:
            self.now[host] -= 1
        return outcome(200)


def test_no_host_sees_more_than_its_cap_in_flight():
    # given 3 hosts, 30 jobs each, cap 3, 16 threads
    probe = ConcurrencyProbe()
    jobs = [Job((h, n), prepared(f"h{h}", n)) for n in range(30) for h in range(3)]
    done = []

    # when
    DeliveryEngine(config(), send=probe).run(jobs, on_done=lambda job, a: done.append(job.key))

    # then
    assert sorted(done) == sorted(j.key for j in jobs)
    assert max(probe.peak.values()) <= 3
    assert min(probe.peak.values()) >= 2  # and the cap is actually used


def test_retries_until_success_and_reports_every_attempt():
    answers = defaultdict(
        lambda: iter([outcome(503), outcome(429, retry_after=0.01), outcome(200)])
    )

    def send(prepared, *, session):
        return next(answers[prepared.event_id])

    results = {}
    DeliveryEngine(config(), send=send).run(
        [Job(1, prepared("a", 1))],
        on_done=lambda job, attempts: results.update({job.key: attempts}),
    )

    assert [a.outcome.status_code for a in results[1]] == [503, 429, 200]
    assert [a.attempt_number for a in results[1]] == [1, 2, 3]


@pytest.mark.parametrize(
    "answer",
    [outcome(404), outcome(None, error="blocked_address"), outcome(400)],
)
def test_final_answers_are_not_retried(answer):
    calls = []

    def send(prepared, *, session):
        calls.append(prepared)
        return answer

    DeliveryEngine(config(), send=send).run([Job(1, prepared("a", 1))], on_done=lambda *_: None)

    assert len(calls) == 1


def test_a_slow_host_does_not_hold_up_the_others():
    # given one host answering slowly and one fast host
    order = []
    lock = threading.Lock()

    def send(prepared, *, session):
        time.sleep(0.2 if prepared.host_key == "http://slow" else 0.001)
        with lock:
            order.append(prepared.host_key)
        return outcome(200)

    jobs = [Job(("s", n), prepared("slow", n)) for n in range(6)]
    jobs += [Job(("f", n), prepared("fast", n)) for n in range(50)]

    # when
    DeliveryEngine(config(host_concurrency=2), send=send).run(jobs, on_done=lambda *_: None)

    # then every fast pair finished before the slow host's queue drained
    assert order.index("http://fast") < 3
    last_fast = max(i for i, host in enumerate(order) if host == "http://fast")
    assert last_fast < len(order) - 1
    assert order.count("http://slow") == 6


def test_stop_leaves_unstarted_pairs_unfired():
    started = []

    def send(prepared, *, session):
        started.append(prepared.event_id)
        time.sleep(0.05)
        return outcome(200)

    jobs = (Job(n, prepared("a", n)) for n in range(1000))
    finished = []
    DeliveryEngine(config(host_concurrency=1, max_workers=1), send=send, tick=0.01).run(
        jobs,
        on_done=lambda job, attempts: finished.append(job.key),
        should_stop=lambda: len(started) >= 3,
    )

    assert 3 <= len(started) < 10
    assert len(finished) == len(started)


def test_a_retry_wait_holds_no_worker_thread():
    # given one worker thread, a host that asks to retry later and a healthy host
    order = []

    def send(prepared, *, session):
        order.append(prepared.event_id)
        if prepared.host_key == "http://busy" and order.count(prepared.event_id) == 1:
            return outcome(503, retry_after=0.3)
        return outcome(200)

    jobs = [Job("busy", prepared("busy", 0))]
    jobs += [Job(("ok", n), prepared("ok", n)) for n in range(1, 6)]

    # when
    DeliveryEngine(config(max_workers=1, retry_cap=1.0), send=send).run(
        jobs, on_done=lambda *_: None
    )

    # then the healthy host was served while the retry waited, on the only thread
    assert order == ["e0", "e1", "e2", "e3", "e4", "e5", "e0"]


def test_no_worker_thread_outlives_the_run():
    before = threading.active_count()
    jobs = [Job(n, prepared(f"h{n % 4}", n)) for n in range(40)]

    DeliveryEngine(config(), send=lambda prepared, *, session: outcome(200)).run(
        jobs, on_done=lambda *_: None
    )

    assert threading.active_count() == before


def test_worker_threads_are_started_only_as_needed():
    # given 16 allowed threads but one host with a cap of 2
    names = set()

    def send(prepared, *, session):
        names.add(threading.current_thread().name)
        time.sleep(0.005)
        return outcome(200)

    jobs = [Job(n, prepared("one", n)) for n in range(30)]

    DeliveryEngine(config(host_concurrency=2), send=send).run(jobs, on_done=lambda *_: None)

    assert len(names) <= 2


# --- the event-loop path (the default transport is a coroutine) ----------------------------


class AsyncConcurrencyProbe:
    """The same probe as a coroutine: the engine runs it on its event loop."""

    def __init__(self, delay: float = 0.01, status: int = 200):
        self.delay = delay
        self.status = status
        self.now: Counter = Counter()
        self.peak: Counter = Counter()
        self.calls: Counter = Counter()
        self.sessions: set[int] = set()
        self.threads: set[str] = set()

    async def __call__(self, prepared: PreparedPostback, *, session) -> AttemptOutcome:
        host = prepared.host_key
        self.sessions.add(id(session))
        self.threads.add(threading.current_thread().name)
        self.now[host] += 1
        self.calls[host] += 1
        self.peak[host] = max(self.peak[host], self.now[host])
        await asyncio.sleep(self.delay)
        self.now[host] -= 1
        return outcome(self.status)


def test_async_send_keeps_the_host_cap_on_one_loop_and_one_session():
    # given 3 hosts, 30 jobs each, cap 3
    probe = AsyncConcurrencyProbe()
    jobs = [Job((h, n), prepared(f"h{h}", n)) for n in range(30) for h in range(3)]
    done = []

    # when
    DeliveryEngine(config(), send=probe).run(
        jobs, on_done=lambda job, a: done.append((job.key, threading.current_thread().name))
    )

    # then
    assert len(done) == 90
    assert {name for _, name in done} == {threading.current_thread().name}
    assert probe.threads == {"postback-loop"}
    assert len(probe.sessions) == 1
    assert all(peak == 3 for peak in probe.peak.values())
    assert sum(probe.calls.values()) == 90


def test_async_send_retries_are_parked_and_counted():
    # given a host that always answers 503
    probe = AsyncConcurrencyProbe(delay=0.001, status=503)
    attempts = {}

    # when
    DeliveryEngine(config(max_attempts=3), send=probe).run(
        [Job(n, prepared("down", n)) for n in range(5)],
        on_done=lambda job, a: attempts.__setitem__(job.key, [x.attempt_number for x in a]),
    )

    # then
    assert attempts == {n: [1, 2, 3] for n in range(5)}
    assert probe.peak["http://down"] <= 3


def test_async_send_stop_lets_in_flight_attempts_finish():
    # given slow attempts and a stop right after the first tick
    probe = AsyncConcurrencyProbe(delay=0.3)
    done = []
    ticks = []

    # when
    DeliveryEngine(config(host_concurrency=2), send=probe.__call__, tick=0.05).run(
        [Job(n, prepared("h", n)) for n in range(20)],
        on_done=lambda job, a: done.append((job.key, a[-1].outcome.delivered)),
        on_tick=lambda: ticks.append(1),
        should_stop=lambda: bool(ticks),
    )

    # then: only the two in flight were sent, and both finished delivered
    assert sum(probe.calls.values()) == 2
    assert sorted(done) == [(0, True), (1, True)]


def test_overlapping_runs_restore_the_collector_threshold_once_all_end():
    import gc

    from conversions.delivery.engine import _fewer_collections

    before = gc.get_threshold()
    first, second = _fewer_collections(), _fewer_collections()
    first.__enter__()
    second.__enter__()
    assert gc.get_threshold()[0] >= 50_000
    first.__exit__(None, None, None)  # the first run ends while the second goes on
    assert gc.get_threshold()[0] >= 50_000
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_a_second_interrupt_still_reports_the_attempts_it_abandons():
    # given two slow attempts in flight when Ctrl-C lands in the scheduler thread
    import signal

    probe = AsyncConcurrencyProbe(delay=2.0)
    done = {}
    ticks = []

    def first_ctrl_c() -> None:
        ticks.append(1)
        if len(ticks) == 2:
            # and a second Ctrl-C while the stop waits for those two attempts
            threading.Timer(
                0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
            ).start()
            raise KeyboardInterrupt

    # when
    with pytest.raises(KeyboardInterrupt):
        DeliveryEngine(config(host_concurrency=2), send=probe.__call__, tick=0.05).run(
            [Job(n, prepared("h", n)) for n in range(6)],
            on_done=lambda job, a: done.__setitem__(job.key, a),
            on_tick=first_ctrl_c,
        )

    # then: both requests that went out are reported, as attempts without an answer
    assert sum(probe.calls.values()) == 2
    assert sorted(done) == [0, 1]
    for attempts in done.values():
        assert [a.outcome.error for a in attempts] == ["connection_error"]
        assert attempts[0].outcome.error_detail.startswith("abandoned")
