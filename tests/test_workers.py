"""Background runs with real worker processes, a real database and a real HTTP receiver.

Each test starts `manage.py db_worker` (or `rqworker`, or the command line) as child
processes on the test database, so the database must be one that other processes can
open: PostgreSQL, or SQLite with a file test database (an in-memory SQLite test database
is private to this process). Prerequisites missing under CI (`CI=true`) fail the test
instead of skipping it.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psutil
import pytest
from django.db import connection
from django.test import Client
from django_tasks_db.models import DBTaskResult

from conversions.access import COMMAND_LINE_ACTOR
from conversions.criteria import parse_criteria
from conversions.models import (
    Conversion,
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerChunk,
    RetriggerRun,
    RunItem,
)
from conversions.services import conversions_retrigger
from tests import factories as f

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
WAIT = 180.0  # generous bound for anything a worker has to finish

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def missing(reason: str) -> None:
    """A missing prerequisite: a failure under CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


# -- a real local receiver --------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a killed worker resets its connections; that is the point of the test


@dataclass
class Receiver:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request's event id.

    `delay` slows each answer down; `gate`, when set, holds every request until it
    returns True for the event ids seen so far (used to make two runs overlap).
    """

    delay: float = 0.0
    gate: Callable[[Counter], bool] | None = None
    events: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)
    open_connections: int = 0
    peak_connections: int = 0
    gate_opened: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._active: Counter = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.open_connections += 1
                    receiver.peak_connections = max(
                        receiver.peak_connections, receiver.open_connections
                    )

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with receiver._lock:
                        receiver.open_connections -= 1
                        receiver._lock.notify_all()

            def do_GET(self) -> None:
                event = parse_qs(urlsplit(self.path).query).get("e", [""])[0]
                receiver._arrived(event)
                try:
                    receiver._hold()
                    body = b"ok"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with receiver._lock:
                        receiver._active[event] -= 1

            def log_message(self, *args) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pb?e={{event_id}}&c={{conversion_id}}"

    def _arrived(self, event: str) -> None:
        with self._lock:
            if self._active[event]:
                self.overlapping.append(event)
            self._active[event] += 1
            self.events.append(event)
            self._lock.notify_all()

    def _hold(self) -> None:
        if self.gate is not None and not self.gate_opened:
            with self._lock:
                opened = self._lock.wait_for(lambda: self.gate(Counter(self.events)), timeout=60)
                self.gate_opened = self.gate_opened or opened
        if self.delay:
            time.sleep(self.delay)

    def counts(self) -> Counter:
        with self._lock:
            return Counter(self.events)

    def wait_idle(self, timeout: float = WAIT) -> None:
        """Until no connection is open: every request a dead client sent is logged."""
        with self._lock:
            assert self._lock.wait_for(lambda: self.open_connections == 0, timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# -- child processes on the test database -------------------------------------------------


def shared_database_url() -> str:
    """DATABASE_URL of the test database, for child processes."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}@{host}{port}/{quote(db['NAME'], safe='')}"
    if db["ENGINE"] == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            missing(
                "the SQLite test database is in memory; worker processes need a file "
                "(DATABASES['default']['TEST']['NAME'])"
            )
        return f"sqlite:///{Path(name).resolve()}"
    missing(f"unsupported database engine {db['ENGINE']}")
    raise AssertionError  # not reached


@dataclass
class Processes:
    tmp_path: Path
    started: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": shared_database_url(),
            "POSTBACK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "RETRIGGER_HEARTBEAT_STALE": "3",
            "POSTBACK_RETRY_BASE": "0.05",
            "POSTBACK_RETRY_CAP": "0.2",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": "false",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py names the project's settings
        env.update(extra)
        return env

    def start(self, *args: str, group: bool = False, **env: str) -> subprocess.Popen:
        """`group`: in a process group of its own, as a terminal runs a command, so a
        signal to the group reaches the workers it forks too (Ctrl-C)."""
        log = self.tmp_path / f"proc-{len(self.started)}-{args[0]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=self.env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0 if group else None,
                # A shell's background job ignores SIGINT; a terminal's command does not.
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
                if group
                else None,
            )
        self.started.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        for started, path in self.started:
            if started is proc:
                return path.read_text(errors="replace")[-4000:]
        return ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[2:]}\n{self.log(p)}" for p, _ in self.started)

    def stop_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    # Stopped before pytest-django empties the tables under them.
    procs.stop_all()


def wait_for(
    condition: Callable[[], object], *, what: str, procs: Processes, timeout: float = WAIT
):
    """Poll `condition` until it is truthy; fail with the workers' logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")


def start_db_worker(procs: Processes, **env: str) -> subprocess.Popen:
    return procs.start("db_worker", "--no-startup-delay", "--interval", "0.1", **env)


# -- data ---------------------------------------------------------------------------------


def make_world(receiver: Receiver, *, conversions: int, postbacks: int = 1, rejected: int = 0):
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    made = [f.make_postback(affiliate, receiver.url()) for _ in range(postbacks)]
    kind = f.make_conversion_type()
    rows = [
        Conversion(
            id=f.next_id(),
            account=account,
            affiliate=affiliate,
            conversion_type=kind,
            click_id=f"00000000-0000-4000-8000-{n:012d}",
            transaction_id=f"tx-{n}",
            payout="10.00",
            revenue="15.00",
            converted_at="2026-01-15T12:00:00Z",
            status=Conversion.Status.REJECTED if n < rejected else Conversion.Status.APPROVED,
        )
        for n in range(conversions)
    ]
    Conversion.objects.bulk_create(rows)
    return account, made, [row.id for row in rows]


def event_ids(conversion_ids, postbacks) -> set[str]:
    return {str(DeliveryAttempt.event_id_for(c, p.pk)) for c in conversion_ids for p in postbacks}


def queue_run(body: dict) -> RetriggerRun:
    result = conversions_retrigger(
        criteria=parse_criteria(body),
        actor=COMMAND_LINE_ACTOR,
        source=RetriggerRun.Source.API,
    )
    assert result.queued, "the run should have gone to the background"
    return result.run


def final_run(run_id: int, procs: Processes) -> RetriggerRun:
    return wait_for(
        lambda: RetriggerRun.objects.filter(
            pk=run_id, status__in=RetriggerRun.FINAL_STATUSES
        ).first(),
        what=f"run {run_id} to finish",
        procs=procs,
    )


def assert_recorded_once(run: RetriggerRun, pairs: int) -> None:
    finals = DeliveryAttempt.objects.filter(run=run, final=True)
    per_pair = Counter(finals.values_list("conversion_id", "postback_id"))
    assert len(per_pair) == pairs
    assert set(per_pair.values()) == {1}, "exactly one final attempt per pair"
    assert not DeliveryClaim.objects.filter(run=run).exists()
    assert not RetriggerChunk.objects.filter(run=run).exclude(status="done").exists()


# -- the tests ----------------------------------------------------------------------------


def test_api_run_goes_to_db_worker_and_finishes(settings, receiver_factory, processes):
    # given a selection larger than a request may fire, and an API client
    settings.RETRIGGER_SYNC_MAX = 5
    settings.RETRIGGER_CHUNK_SIZE = 10
    receiver = receiver_factory(delay=0.01)
    account, postbacks, ids = make_world(receiver, conversions=60, postbacks=2, rejected=6)
    admin = f.make_account_admin(account)
    stranger = f.make_account_admin(f.make_account())
    client = Client(HTTP_AUTHORIZATION=f"Token {f.token_for(admin)}")

    # when the API is asked, it answers 202 with the queued run and where to follow it
    response = client.post(
        "/api/conversions/retrigger", {"limit": 1000}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    document = response.json()
    assert "results" not in document
    assert document["run"]["status"] == "queued" and document["run"]["selected"] == 60
    location = response["Location"]
    assert location == f"/api/conversions/retrigger-runs/{document['run']['id']}"
    other = Client(HTTP_AUTHORIZATION=f"Token {f.token_for(stranger)}")
    assert other.get(location).status_code == 404

    # and a real worker process takes it
    start_db_worker(processes)
    seen: list[int] = []

    def finished():
        run = client.get(location).json()["run"]
        seen.append(run["processed"])
        return run if run["status"] in ("completed", "failed", "cancelled") else None

    run = wait_for(finished, what="the run to finish", procs=processes)

    # then the counts are right (skipped pairs by reason), progress only grew, and every
    # pair reached the receiver once
    assert run["status"] == "completed", processes.logs()
    assert (run["processed"], run["retriggered"], run["delivered"]) == (60, 54, 54)
    assert (run["failed"], run["skipped"], run["skippedByReason"]) == (0, 6, {"rejected": 12})
    assert seen == sorted(seen)
    received = receiver.counts()
    assert set(received) == event_ids(ids[6:], postbacks)
    assert set(received.values()) == {1}
    assert_recorded_once(RetriggerRun.objects.get(pk=run["id"]), pairs=54 * 2)


def test_killed_worker_is_taken_over_and_nothing_is_lost_or_doubled(
    settings, receiver_factory, processes
):
    # given a run of a few hundred pairs against a slow receiver (50 ms per answer)
    settings.RETRIGGER_SYNC_MAX = 5
    settings.RETRIGGER_CHUNK_SIZE = 25
    receiver = receiver_factory(delay=0.05)
    _, postbacks, ids = make_world(receiver, conversions=400)
    run = queue_run({"limit": 1000})
    expected = event_ids(ids, postbacks)

    # when worker A is killed -9 in the middle of the run
    worker_a = start_db_worker(processes)
    wait_for(
        lambda: RetriggerRun.objects.get(pk=run.pk).processed >= 40,
        what="worker A to make progress",
        procs=processes,
    )
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait(timeout=30)
    receiver.wait_idle()  # every request A had sent is now logged
    at_kill = RetriggerRun.objects.get(pk=run.pk)
    assert at_kill.status == "running" and 40 <= at_kill.processed < 400
    sent_by_a = receiver.counts()
    recorded = {
        str(e)
        for e in DeliveryAttempt.objects.filter(run=run, final=True).values_list(
            "event_id", flat=True
        )
    }
    in_flight = set(sent_by_a) - recorded  # fired by A, outcome not written

    # and worker B starts: it takes the run over once A's heartbeat is stale
    start_db_worker(processes)
    done = final_run(run.pk, processes)

    # then the run finished with the right counts
    assert done.status == "completed", processes.logs()
    assert (done.processed, done.delivered, done.failed, done.skipped) == (400, 400, 0, 0)
    assert RunItem.objects.filter(run=run).count() == 400
    assert_recorded_once(done, pairs=400)
    # and the receiver saw every pair; only pairs in flight at the kill came twice
    received = receiver.counts()
    assert set(received) == expected
    assert set(sent_by_a.values()) == {1}, "worker A fired nothing twice"
    duplicates = {event for event, n in received.items() if n > 1}
    assert set(received.values()) <= {1, 2}
    assert duplicates <= in_flight, "a pair with a recorded outcome was fired again"
    assert not recorded & duplicates
    assert not receiver.overlapping, "a pair was in flight twice at once"
    print(
        f"\nkilled at processed={at_kill.processed}: in flight {len(in_flight)}, "
        f"re-fired {len(duplicates)} (same event id)"
    )


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of this machine that is empty now, emptied again afterwards."""
    try:
        import redis
    except ImportError:
        missing("the redis client is not installed")
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
    try:
        probe = redis.Redis.from_url(f"{base}/0", socket_connect_timeout=2)
        probe.ping()
    except redis.RedisError as exc:
        missing(f"no Redis at {base}: {exc}")
    for number in range(15, 0, -1):
        db = redis.Redis.from_url(f"{base}/{number}")
        if db.dbsize() == 0:
            break
    else:
        missing("no empty Redis database (1-15) to use")
    db.set("retrigger-test-owner", str(os.getpid()))
    try:
        yield f"{base}/{number}"
    finally:
        db.flushdb()
        db.close()


def test_rq_backend_runs_the_same_tasks_with_a_real_rqworker(
    receiver_factory, processes, redis_url
):
    # given conversions, and RQ selected by settings alone
    receiver = receiver_factory(delay=0.005)
    _, postbacks, ids = make_world(receiver, conversions=50, postbacks=2, rejected=5)
    rq_env = {"TASKS_BACKEND": "rq", "REDIS_URL": redis_url, "RETRIGGER_SYNC_MAX": "10"}

    # when the command line queues the run and a burst rqworker drains the queue
    queued = processes.start(
        "retrigger_conversions", "--background", "--json", "--limit", "1000", **rq_env
    )
    assert queued.wait(timeout=WAIT) == 0, processes.logs()
    run = RetriggerRun.objects.get()
    assert run.status == "queued" and run.selected == 50
    worker = processes.start("rqworker", "default", "--burst", **rq_env)
    assert worker.wait(timeout=WAIT) == 0, processes.logs()

    # then the run is complete and every pair arrived exactly once
    run.refresh_from_db()
    assert run.status == "completed", processes.logs()
    assert (run.processed, run.retriggered, run.delivered, run.skipped) == (50, 45, 45, 5)
    assert run.skipped_by_reason == {"rejected": 10}  # pairs
    received = receiver.counts()
    assert set(received) == event_ids(ids[5:], postbacks)
    assert set(received.values()) == {1}
    assert_recorded_once(run, pairs=45 * 2)


def test_two_runs_at_once_over_overlapping_conversions_never_double_fire(
    receiver_factory, processes
):
    # given 180 conversions; run 1 takes the first 120 in order, run 2 the last 120
    # backwards, so the middle 60 are in both and each run starts on its own ones
    ids: list[int] = []
    only_first: set[str] = set()
    only_second: set[str] = set()

    def both_runs_started(seen: Counter) -> bool:
        return bool(only_first & seen.keys()) and bool(only_second & seen.keys())

    receiver = receiver_factory(delay=0.02, gate=both_runs_started)
    _, postbacks, ids = make_world(receiver, conversions=180)
    only_first |= event_ids(ids[:60], postbacks)
    only_second |= event_ids(ids[120:], postbacks)

    # when both start at once (the receiver holds every answer until both fire)
    common = ("retrigger_conversions", "--json", "--limit", "120")
    first = processes.start(*common, "--sort=id")
    second = processes.start(*common, "--sort=-id")
    assert first.wait(timeout=WAIT) == 0, processes.logs()
    assert second.wait(timeout=WAIT) == 0, processes.logs()

    # then they overlapped, and each pair was fired once, never twice at once
    assert receiver.gate_opened, "the two runs did not run at the same time"
    received = receiver.counts()
    assert set(received) == event_ids(ids, postbacks)
    assert set(received.values()) == {1}
    assert not receiver.overlapping
    runs = list(RetriggerRun.objects.order_by("pk"))
    assert [r.status for r in runs] == ["completed", "completed"]
    assert sum(r.retriggered for r in runs) == 180
    assert sum(r.skipped_in_progress + r.skipped_already_delivered for r in runs) == 60
    assert all(r.skipped_in_progress + r.skipped_already_delivered == r.skipped for r in runs)


def test_cancel_stops_a_running_run_and_leaves_the_rest_unfired(
    settings, receiver_factory, processes
):
    # given a running background run against a slow receiver
    settings.RETRIGGER_SYNC_MAX = 5
    settings.RETRIGGER_CHUNK_SIZE = 25
    receiver = receiver_factory(delay=0.05)
    account, postbacks, ids = make_world(receiver, conversions=300)
    admin = f.make_account_admin(account)
    client = Client(HTTP_AUTHORIZATION=f"Token {f.token_for(admin)}")
    response = client.post(
        "/api/conversions/retrigger", {"limit": 1000}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    location = response["Location"]
    start_db_worker(processes)
    wait_for(
        lambda: client.get(location).json()["run"]["processed"] >= 20,
        what="the run to make progress",
        procs=processes,
    )

    # when its creator cancels it
    cancel = client.post(f"{location}/cancel")
    assert cancel.status_code == 200, cancel.content
    run = wait_for(
        lambda: (r := client.get(location).json()["run"])["status"] != "running" and r,
        what="the run to stop",
        procs=processes,
    )
    wait_for(
        lambda: not DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).exists(),
        what="every worker task to end",
        procs=processes,
    )
    receiver.wait_idle()

    # then it ended cancelled; what was fired is recorded, the rest stayed unfired
    assert run["status"] == "cancelled"
    assert 20 <= run["processed"] < 300
    received = receiver.counts()
    assert set(received.values()) == {1}
    stored = DeliveryAttempt.objects.filter(run_id=run["id"])
    assert set(received) == {str(e) for e in stored.values_list("event_id", flat=True)}
    assert len(received) < 300
    assert RunItem.objects.filter(run_id=run["id"]).count() == run["processed"]
    assert not DeliveryClaim.objects.exists()
    unfired = event_ids(ids, postbacks) - set(received)
    assert unfired and not stored.filter(event_id__in=unfired).exists()


# -- the foreground command in several processes ---------------------------------------------


def run_in_processes(account, processes: int) -> RetriggerRun:
    from django.core.management import call_command

    call_command(
        "retrigger_conversions",
        "--account-id",
        str(account.pk),
        "--processes",
        str(processes),
        stdout=StringIO(),
        stderr=StringIO(),
    )
    return RetriggerRun.objects.get()


def worker_pids(run: RetriggerRun) -> set[int]:
    names = RetriggerChunk.objects.filter(run=run).values_list("worker", flat=True)
    return {int(name.split(":")[-2]) for name in names}


def test_command_in_two_processes_fires_each_pair_once_and_keeps_the_cap(
    settings, receiver_factory, allow_loopback
):
    # given 60 conversions in 6 chunks, a cap of 4 connections to the one receiver
    settings.RETRIGGER_CHUNK_SIZE = 10
    settings.POSTBACK_HOST_CONCURRENCY = 4
    receiver = receiver_factory(delay=0.02)
    account, postbacks, ids = make_world(receiver, conversions=60)

    # when the command runs in two processes
    run = run_in_processes(account, 2)

    # then both processes worked, every pair was fired once, the cap held across them
    assert run.status == "completed" and run.workers == 2
    assert run.processed == run.delivered == 60
    assert len(worker_pids(run)) == 2 and os.getpid() in worker_pids(run)
    receiver.wait_idle()
    assert receiver.counts() == Counter(event_ids(ids, postbacks))
    assert 1 < receiver.peak_connections <= 4
    assert_recorded_once(run, pairs=60)


def test_command_finishes_the_chunks_of_a_killed_worker_process(
    settings, receiver_factory, monkeypatch, allow_loopback
):
    # given a forked worker that dies (kill -9) right after claiming a chunk
    from conversions import forking, services

    settings.RETRIGGER_CHUNK_SIZE = 10
    receiver = receiver_factory()
    account, postbacks, ids = make_world(receiver, conversions=40)

    def dying_child(run):
        assert services._chunk_claim(run, services.worker_name()) is not None
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(forking, "_child", dying_child)

    # when
    run = run_in_processes(account, 2)

    # then the command worked the lost chunk off itself: nothing lost, nothing doubled
    assert run.status == "completed"
    assert run.processed == run.delivered == 40
    receiver.wait_idle()
    assert receiver.counts() == Counter(event_ids(ids, postbacks))
    assert_recorded_once(run, pairs=40)


def test_a_run_inside_a_transaction_stays_in_this_process(settings, receiver_factory):
    from django.db import transaction

    from conversions.forking import processes_for
    from conversions.services import run_share_workers

    settings.RETRIGGER_CHUNK_SIZE = 10
    receiver = receiver_factory()
    make_world(receiver, conversions=30)
    run = RetriggerRun.objects.create(actor="t", source="command", criteria={})
    for seq in range(3):
        RetriggerChunk.objects.create(run=run, seq=seq, conversion_ids=[])

    assert run_share_workers(run, processes_for(2)) == 2
    assert run_share_workers(run, processes_for(9)) == 3  # one a chunk at most
    with transaction.atomic():
        assert processes_for(2) == 1


def test_a_failing_command_leaves_no_worker_process_behind(
    settings, receiver_factory, monkeypatch, allow_loopback
):
    # given the command's own share of the work fails (the forked worker's does not)
    from django.core.management import call_command

    from conversions import services

    settings.RETRIGGER_CHUNK_SIZE = 10
    receiver = receiver_factory(delay=0.05)
    account, _, _ = make_world(receiver, conversions=60)
    parent, real_run_work = os.getpid(), services.run_work

    def run_work(**kwargs):
        if os.getpid() == parent:
            raise RuntimeError("the command's worker broke")
        return real_run_work(**kwargs)

    monkeypatch.setattr(services, "run_work", run_work)

    # when
    with pytest.raises(RuntimeError):
        call_command(
            "retrigger_conversions", "--account-id", str(account.pk), "--processes", "2",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip

    # then the run asks its other worker to stop, and that worker has exited
    run = RetriggerRun.objects.get()
    assert run.cancel_requested
    assert not [p for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE]


# Ctrl-C inside os.fork's own after-fork hooks (where logging re-initialises its locks),
# the moment a black-box try hung the command at: os.fork swallows an exception raised
# there. Registered once for the session; it acts only while a test arms it.
FORK_SIGNAL = {"send": False}


def _signal_in_after_fork_hooks() -> None:
    if FORK_SIGNAL["send"]:
        FORK_SIGNAL["send"] = False
        signal.raise_signal(signal.SIGINT)


os.register_at_fork(after_in_parent=_signal_in_after_fork_hooks)


def test_a_ctrl_c_while_forking_cancels_the_run_and_stops_every_worker(
    settings, receiver_factory, monkeypatch, allow_loopback
):
    # given a Ctrl-C that arrives while the command forks its second worker
    from django.core.management import CommandError, call_command

    from conversions import forking

    settings.RETRIGGER_CHUNK_SIZE = 10
    receiver = receiver_factory(delay=0.05)
    account, _, _ = make_world(receiver, conversions=60)
    parent, real_fork, forks = os.getpid(), os.fork, []

    def fork():
        forks.append(1)
        FORK_SIGNAL["send"] = len(forks) == 2 and os.getpid() == parent
        return real_fork()

    monkeypatch.setattr(forking.os, "fork", fork)

    # when
    with pytest.raises(CommandError) as stopped:
        call_command(
            "retrigger_conversions", "--account-id", str(account.pk), "--processes", "3",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip

    # then both workers were forked, the run is cancelled with no claim left, and no
    # worker process outlives the command
    assert stopped.value.returncode == 130
    assert len(forks) == 2
    run = RetriggerRun.objects.get()
    assert run.status == "cancelled"
    assert not DeliveryClaim.objects.exists()
    assert not [p for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE]


STOPS = {
    # Ctrl-C in the terminal, a closed terminal or SSH session (both to the whole
    # process group), and `kill`, `timeout` or a service manager (the command alone).
    "ctrl-c": (signal.SIGINT, True, "Interrupted: the run was cancelled."),
    "hang-up": (signal.SIGHUP, True, "Interrupted by SIGHUP: the run was cancelled."),
    "terminate": (signal.SIGTERM, False, "Interrupted by SIGTERM: the run was cancelled."),
}


@pytest.mark.parametrize("stop", STOPS)
def test_a_stopped_command_records_every_answered_postback_and_leaves_no_claim(
    settings, receiver_factory, processes, stop
):
    # given a foreground run in two processes (12 chunks) against a slow receiver
    receiver = receiver_factory(delay=0.1)
    account, _, _ = make_world(receiver, conversions=600)
    command = processes.start(
        "retrigger_conversions", "--account-id", str(account.pk), "--processes", "2",
        group=True, POSTBACK_HOST_CONCURRENCY="8", RETRIGGER_CHUNK_SIZE="50",
    )  # fmt: skip
    wait_for(lambda: len(receiver.counts()) >= 40, what="postbacks to arrive", procs=processes)

    workers = psutil.Process(command.pid).children()
    assert workers, "the command forked no worker process"

    # when the command is stopped by a signal
    signum, to_group, message = STOPS[stop]
    if to_group:
        os.killpg(command.pid, signum)
    else:
        command.send_signal(signum)
    assert command.wait(timeout=60) == 128 + signum, processes.log(command)
    received_at_exit = receiver.counts()
    time.sleep(0.5)

    # then nothing is sent after the command ended, and everything answered is recorded
    assert receiver.counts() == received_at_exit
    assert message in processes.log(command)
    assert "Traceback" not in processes.log(command)
    assert not [worker for worker in workers if worker.is_running()]
    run = RetriggerRun.objects.get()
    assert run.status == "cancelled"
    stored = DeliveryAttempt.objects.filter(run=run)
    assert set(map(str, stored.values_list("event_id", flat=True))) == set(received_at_exit)
    assert run.processed == RunItem.objects.filter(run=run).count() == stored.count()
    assert run.processed < 600
    assert not DeliveryClaim.objects.exists()
