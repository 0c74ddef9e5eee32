"""Bulk writes of a run's progress: attempts, counted conversions, counters, chunks.

Everything finished since the last flush is written in one transaction, so a run taken
over after a crash sees either all of a conversion's bookkeeping or none of it.
"""

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from conversions.bulk import add_to_run, copy_rows, delete_claims, insert_run_items
from conversions.delivery.engine import AttemptLog
from conversions.models import (
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerChunk,
    RetriggerRun,
    RunItem,
)
from conversions.results import RunCounts, public_error

logger = logging.getLogger(__name__)

EXCERPT_COLUMN_LIMIT = 4000
ATTEMPT_FIELDS = (
    "run_id",
    "conversion_id",
    "postback_id",
    "affiliate_id",
    "event_id",
    "attempt_number",
    "method",
    "url",
    "status_code",
    "error",
    "error_detail",
    "delivered",
    "final",
    "duration_ms",
    "response_excerpt",
    "created_at",
)


@dataclass
class FinishedPair:
    conversion_id: int
    postback_id: int
    affiliate_id: int
    event_id: str
    method: str
    masked_url: str
    attempts: list[AttemptLog]


class FlushSignal:
    """What a flush tells the worker: go on, stop (cancel), or stop (chunk lost)."""

    CONTINUE = "continue"
    CANCEL = "cancel"
    LOST = "lost"


@dataclass
class RunRecorder:
    """Buffers what a worker finished and writes it in one transaction per flush."""

    run: RetriggerRun | None
    worker: str = ""
    counts: RunCounts = field(default_factory=RunCounts)  # totals seen by this recorder
    _pairs: list[FinishedPair] = field(default_factory=list)
    # (conversion_id, outcome) and what counting it adds to the run
    _items: list[tuple[tuple[int, str], RunCounts]] = field(default_factory=list)
    _done_chunks: list[int] = field(default_factory=list)

    def pair_finished(self, pair: FinishedPair) -> None:
        self._pairs.append(pair)

    def conversion_counted(self, conversion_id: int, outcome: str, delta: RunCounts) -> None:
        self.counts.add(delta)
        self._items.append(((conversion_id, outcome), delta))

    def chunk_done(self, chunk_id: int) -> None:
        self._done_chunks.append(chunk_id)

    def flush(self, *, chunk_ids: Sequence[int] = ()) -> str:
        """Write what is buffered and beat the heartbeat; returns a `FlushSignal`.

        If another worker took one of our chunks over (we stalled past the heartbeat
        limit), nothing is written: that worker now owns those conversions, and two
        workers must never count the same conversion.
        """
        if self.run is None:
            self._reset()
            return FlushSignal.CONTINUE
        now = timezone.now()
        with transaction.atomic():
            held = set(chunk_ids) | set(self._done_chunks)
            if held and self.worker:
                # The heartbeat doubles as the ownership check: one statement.
                mine = RetriggerChunk.objects.filter(pk__in=held, worker=self.worker).update(
                    heartbeat_at=now
                )
                if mine < len(held):
                    transaction.set_rollback(True)
                    logger.warning("run %s: a chunk of %s was taken over", self.run.pk, self.worker)
                    self._reset()
                    return FlushSignal.LOST
            if self._pairs:
                copy_rows(DeliveryAttempt, ATTEMPT_FIELDS, self._attempt_rows(now))
            delta = RunCounts()
            if self._items:
                # Conversions the run counted already (a chunk taken over) are left out,
                # their deltas with them.
                new = insert_run_items(
                    RunItem,
                    run_id=self.run.pk,
                    items=[item for item, _ in self._items],
                    created_at=now,
                )
                for item, item_delta in self._items:
                    if item[0] in new:
                        new.discard(item[0])
                        delta.add(item_delta)
                # A pair's claim lives until its conversion is counted: a worker taking
                # over after a crash then finds either the claim or the counted item.
                ids = [item[0] for item, _ in self._items]
                delete_claims(DeliveryClaim, run_id=self.run.pk, conversion_ids=ids)
            increments = {
                name: value
                for name in ("processed", "retriggered", "delivered", "failed", "skipped")
                if (value := getattr(delta, name))
            }
            for reason, value in delta.skipped_by_reason.items():
                increments[f"skipped_{reason}"] = value
            cancel_requested = add_to_run(
                RetriggerRun, run_id=self.run.pk, increments=increments, heartbeat_at=now
            )
            if self._done_chunks:
                RetriggerChunk.objects.filter(pk__in=self._done_chunks).update(
                    status=RetriggerChunk.Status.DONE
                )
        self._reset()
        return FlushSignal.CANCEL if cancel_requested else FlushSignal.CONTINUE

    def _attempt_rows(self, now) -> Iterator[tuple]:
        """One tuple per attempt, in the order of `ATTEMPT_FIELDS`."""
        run_id = self.run.pk
        for pair in self._pairs:
            last = len(pair.attempts)
            for log in pair.attempts:
                outcome = log.outcome
                yield (
                    run_id,
                    pair.conversion_id,
                    pair.postback_id,
                    pair.affiliate_id,
                    pair.event_id,
                    log.attempt_number,
                    pair.method,
                    pair.masked_url,
                    outcome.status_code,
                    # The contract's short codes; the detail keeps the finer reason.
                    public_error(outcome.error) if outcome.error else "",
                    (outcome.error_detail or "")[:500],
                    outcome.delivered,
                    log.attempt_number == last,
                    max(0, int(outcome.duration_ms)),
                    (outcome.response_excerpt or "")[:EXCERPT_COLUMN_LIMIT],
                    log.started_at or now,
                )

    def _reset(self) -> None:
        self._pairs = []
        self._items = []
        self._done_chunks = []
