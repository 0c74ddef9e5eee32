"""Re-trigger postbacks from a terminal: the same service, rules and limits as the API."""

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.exceptions import ValidationError

from conversions.access import COMMAND_LINE_ACTOR, AccountForbidden, actor_for_user
from conversions.criteria import parse_criteria
from conversions.forking import STOP_SIGNALS, usable_cpus
from conversions.models import RetriggerRun
from conversions.results import RunCounts, run_document
from conversions.services import conversions_retrigger

# option dest -> API body key; list options are repeatable and comma-separated
LIST_OPTIONS = {
    "id": "id",
    "affiliate_id": "affiliateId",
    "account_id": "accountId",
    "click_id": "clickIds",
    "conversion_type": "conversionTypes",
    "brand_id": "brandIds",
    "traffic_source_id": "trafficSourceId",
}
SCALAR_OPTIONS = {
    "from_date": "fromDate",
    "to_date": "toDate",
    "updated_since": "updatedSince",
    "created_from": "createdFrom",
    "offset": "offset",
    "limit": "limit",
    "sort": "sort",
}
INTEGER_KEYS = {
    "id",
    "affiliateId",
    "accountId",
    "conversionTypes",
    "brandIds",
    "trafficSourceId",
    "offset",
    "limit",
}


class Command(BaseCommand):
    help = "Re-trigger the postbacks of every conversion matching the criteria."

    def add_arguments(self, parser: CommandParser) -> None:
        for dest in LIST_OPTIONS:
            parser.add_argument(
                f"--{dest.replace('_', '-')}",
                dest=dest,
                action="append",
                metavar="X[,Y...]",
                help="repeatable and comma-separated",
            )
        for dest in SCALAR_OPTIONS:
            parser.add_argument(f"--{dest.replace('_', '-')}", dest=dest)
        parser.add_argument("--force", action="store_true", help="re-fire rejected/delivered")
        parser.add_argument("--dry-run", action="store_true", help="report, send nothing")
        parser.add_argument("--json", action="store_true", help="print the API's JSON document")
        parser.add_argument("--user", help="act with this user's rights and name")
        parser.add_argument(
            "--background", action="store_true", help="queue the run for the task workers"
        )
        parser.add_argument(
            "--follow", type=int, metavar="RUN_ID", help="show an existing run's progress"
        )
        parser.add_argument(
            "--processes",
            type=int,
            metavar="N",
            help="processes for a foreground run, sharing the per-host cap "
            "(default: RETRIGGER_COMMAND_PROCESSES; 0 = one per CPU core)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        actor = self._actor(options.get("user"))
        if options.get("follow") is not None:
            extra = [
                f"--{name.replace('_', '-')}"
                for name in (
                    *LIST_OPTIONS,
                    *SCALAR_OPTIONS,
                    "force",
                    "dry_run",
                    "background",
                    "processes",
                )
                if options.get(name) not in (None, False)
            ]
            if extra:
                raise CommandError(f"--follow shows an existing run; drop {', '.join(extra)}.")
            self._follow(options["follow"], actor, as_json=options["json"])
            return
        self._check_combinations(options)
        options["processes"] = self._processes(options.get("processes"))
        body = self._body(options)
        try:
            criteria = parse_criteria(body)
        except ValidationError as exc:
            raise CommandError(f"Invalid criteria: {json.dumps(exc.detail)}") from exc

        progress = self._progress_bar() if sys.stderr.isatty() and not options["json"] else None
        try:
            with _stop_signals_interrupt() as received:
                result = self._retrigger(criteria, actor, options, progress)
        except KeyboardInterrupt as exc:
            # The service has cancelled the run: pairs not yet fired stay unfired.
            if progress is not None:
                self.stderr.write("")  # end the progress bar's line
            signum = received[0] if received else signal.SIGINT
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            raise CommandError(
                f"Interrupted{by}: the run was cancelled.", returncode=128 + signum
            ) from exc
        if progress is not None:
            self.stderr.write("")
        if options["json"]:
            self.stdout.write(json.dumps(result.to_document(), indent=2))
            return
        self._summary(result.run, result.counts, dry_run=options["dry_run"])
        if result.queued:
            self.stdout.write(
                f"Queued as run {result.run.pk}; follow it with "
                f"`manage.py retrigger_conversions --follow {result.run.pk}`."
            )

    def _retrigger(self, criteria, actor, options: dict[str, Any], progress):
        try:
            return conversions_retrigger(
                criteria=criteria,
                actor=actor,
                force=options["force"],
                dry_run=options["dry_run"],
                source=RetriggerRun.Source.COMMAND,
                background=bool(options["background"]),
                keep_results=options["json"],
                progress=progress,
                processes=options["processes"],
            )
        except AccountForbidden as exc:
            raise CommandError(str(exc)) from exc

    # -- input -------------------------------------------------------------------------

    def _actor(self, username: str | None):
        # Only an absent --user means the command line itself: an empty value (an unset
        # shell variable) must not silently grant every account.
        if username is None:
            return COMMAND_LINE_ACTOR
        try:
            username.encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes of another encoding on the command line
            raise CommandError(f"No user named {username!r}.") from exc
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        actor = actor_for_user(user)
        if actor.admin_account_ids is not None and not actor.admin_account_ids:
            raise CommandError(f"{username} is not an account admin.")
        return actor

    @staticmethod
    def _check_combinations(options: dict[str, Any]) -> None:
        if options["background"] and options["dry_run"]:
            raise CommandError("A dry run is never queued; drop --background or --dry-run.")
        if options.get("processes") is None:
            return
        for name in ("background", "dry_run", "json"):
            if options[name]:
                why = {
                    "background": "the task workers share a queued run",
                    "dry_run": "a dry run fires nothing",
                    "json": "--json lists every result, which one process keeps",
                }[name]
                flag = f"--{name.replace('_', '-')}"
                raise CommandError(
                    f"--processes is for foreground runs ({why}); drop it or {flag}."
                )

    @staticmethod
    def _processes(value: int | None) -> int:
        if value is None:
            value = settings.RETRIGGER_COMMAND_PROCESSES
            if value < 0:
                raise CommandError(
                    "RETRIGGER_COMMAND_PROCESSES must be 0 (one per CPU core) or more."
                )
        if value < 0:
            raise CommandError("--processes must be 0 (one per CPU core) or more.")
        return value or usable_cpus()

    @staticmethod
    def _body(options: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for dest, key in LIST_OPTIONS.items():
            values = options.get(dest)
            if values is None:
                continue
            parts = [part.strip() for value in values for part in value.split(",")]
            body[key] = [_number(part) if key in INTEGER_KEYS else part for part in parts]
        for dest, key in SCALAR_OPTIONS.items():
            value = options.get(dest)
            if value is not None:
                body[key] = _number(value) if key in INTEGER_KEYS else value
        return body

    # -- output ------------------------------------------------------------------------

    def _progress_bar(self):
        started = time.monotonic()
        state: dict[str, Any] = {"total": None, "first": None}
        # Progress is not an error: no error colouring on stderr.
        self.stderr.style_func = None

        def show(counts: RunCounts) -> None:
            total = state["total"] or counts.selected or 0
            done = counts.processed
            if state["first"] is None:
                state["first"] = done  # --follow joins a run part-way
            width = 30
            filled = int(width * done / total) if total else 0
            rate = (done - state["first"]) / max(time.monotonic() - started, 1e-6)
            self.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total or '?'} "
                f"delivered {counts.delivered} failed {counts.failed} "
                f"skipped {counts.skipped} ({rate:.0f}/s)",
                ending="",
            )
            self.stderr.flush()

        return show

    def _summary(self, run: RetriggerRun | None, counts: RunCounts, *, dry_run: bool) -> None:
        label = "Dry run" if dry_run else f"Run {run.pk} {run.status}"
        self.stdout.write(
            f"{label}: matched {counts.matched}, selected {counts.selected}, "
            f"{'would fire' if dry_run else 'retriggered'} {counts.retriggered}, "
            f"delivered {counts.delivered}, failed {counts.failed}, skipped {counts.skipped}"
        )
        for reason, count in counts.skipped_by_reason.items():
            self.stdout.write(f"  skipped {reason}: {count}")

    def _follow(self, run_id: int, actor, *, as_json: bool) -> None:
        from conversions.services import run_get_for_actor

        try:
            run = run_get_for_actor(run_id=run_id, actor=actor)
        except RetriggerRun.DoesNotExist as exc:
            raise CommandError(f"No run {run_id}.") from exc
        show = self._progress_bar() if sys.stderr.isatty() else None
        while not run.is_final:
            if show is not None:
                show(RunCounts.from_run(run))
            try:
                time.sleep(1)
            except KeyboardInterrupt as exc:
                if show is not None:
                    self.stderr.write("")
                raise CommandError(
                    f"Stopped following; run {run.pk} goes on "
                    f"(cancel it through the API or the admin).",
                    returncode=130,
                ) from exc
            run.refresh_from_db()
        if show is not None:
            show(RunCounts.from_run(run))
            self.stderr.write("")
        if as_json:
            document = {"info": run.criteria, "run": run_document(run=run, with_progress=True)}
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self._summary(run, RunCounts.from_run(run), dry_run=False)


@contextmanager
def _stop_signals_interrupt() -> Iterator[list[int]]:
    """Within the block, the stop signals raise KeyboardInterrupt like Ctrl-C (the forked
    worker processes inherit that); yields the list of the signals received.

    A closed terminal or SSH session (SIGHUP) and `kill`, `timeout` or a service manager
    (SIGTERM) then stop a foreground run the way Ctrl-C does, instead of killing it with
    its claims held and its forked workers sending on.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, _frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {}
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signum != signal.SIGINT:  # Python's own raises already
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _number(text: str) -> Any:
    """Whole numbers become ints; anything else is left for the criteria to refuse."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    return text
