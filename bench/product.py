"""Run one `manage.py retrigger_conversions` in this process and report it as JSON.

    python bench/product.py retrigger_conversions --account-id 1 --limit 4000 --force

The command runs exactly as from a terminal (the real service path, database writes
included); around it this wrapper counts the SQL statements by kind, times the command
alone, wall and CPU, and samples the resident memory of the process and of the workers it
forks. Start-up is left out, so short runs are not dominated by it: Django's set-up and
the imports of the command's modules (the baselines' imports are outside their timing
too). The last line printed is one JSON object.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
STATEMENT_KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "SAVEPOINT", "RELEASE")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command, get_commands, load_command_class
    from django.db import connection

    # Importing the command's modules (aiohttp among them) is start-up, not the run.
    load_command_class(get_commands()[argv[0]], argv[0])
    importlib.import_module("conversions.delivery.engine")  # imported lazily by the service
    importlib.import_module("conversions.forking")
    from conversions.models import RetriggerRun

    # Counted in memory shared with the worker processes the command may fork, so their
    # statements are counted too (the wrapper is inherited with the connection).
    shared = multiprocessing.Array("q", len(STATEMENT_KINDS) + 1)

    def count(execute, sql, params, many, context):
        kind = sql.lstrip().split(None, 1)[0].upper()
        slot = STATEMENT_KINDS.index(kind) if kind in STATEMENT_KINDS else len(STATEMENT_KINDS)
        with shared.get_lock():
            shared[slot] += 1
        return execute(sql, params, many, context)

    connection.ensure_connection()
    last_run = RetriggerRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
    sampler = _RssSampler()
    out = io.StringIO()
    with connection.execute_wrapper(count), sampler:
        cpu_started = _cpu_seconds()
        started = time.perf_counter()
        call_command(*argv, stdout=out)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
    statements = {
        kind: n for kind, n in zip((*STATEMENT_KINDS, "OTHER"), shared[:], strict=True) if n
    }
    # The command creates its run first thing: the first one after `last_run` is ours.
    run = (
        RetriggerRun.objects.filter(id__gt=last_run)
        .order_by("id")
        .values(
            "id", "status", "selected", "processed", "delivered", "failed", "skipped", "workers"
        )
        .first()
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "queries": sum(statements.values()),
                "statements": dict(statements),
                "rss_before_mb": sampler.start_mb,
                "peak_rss_mb": sampler.peak_mb,
                "output": out.getvalue().strip(),
                "run": run,
            }
        )
    )
    return 0


def _cpu_seconds() -> float:
    # Every thread of this process and of the worker processes it forked and reaped,
    # user and system: what the command cost the machine, which other load on a shared
    # machine barely changes (wall time it does).
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class _RssSampler:
    """Peak resident memory while the command runs, sampled every 20 ms: this process
    and the worker processes it forked, summed (pages they still share with this one
    are counted twice, so the figure errs high).

    `ru_maxrss` would also hold Django's start-up peak, which can hide the command's.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        total = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # ended after the listing
                total += child.memory_info().rss
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> _RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
