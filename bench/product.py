"""Run one `manage.py retrigger_conversions` in this process and report it as JSON.

    python bench/product.py retrigger_conversions --account-id 1 --limit 4000 --force

The command runs exactly as from a terminal (the real service path, database writes
included); around it this wrapper counts the SQL statements by kind, times the command
alone, wall and CPU (Django's start-up is left out, so short runs are not dominated by
it) and samples the process's resident memory. The last line printed is one JSON
object.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from conversions.models import RetriggerRun

    statements: Counter[str] = Counter()

    def count(execute, sql, params, many, context):
        statements[sql.lstrip().split(None, 1)[0].upper()] += 1
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
    # The command creates its run first thing: the first one after `last_run` is ours.
    run = (
        RetriggerRun.objects.filter(id__gt=last_run)
        .order_by("id")
        .values("id", "status", "selected", "processed", "delivered", "failed", "skipped")
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
    # Every thread of this process, user and system: what the command cost the machine,
    # which other load on a shared machine barely changes (wall time it does).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _RssSampler:
    """Peak resident memory while the command runs, sampled every 20 ms.

    `ru_maxrss` would also hold Django's start-up peak, which can hide the command's.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page / 2**20

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
