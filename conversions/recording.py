"""Bulk writes of a run's progress: attempts, counted conversions, counters, chunks.

Everything finished since the last flush is written in one transaction, so a run taken
over after a crash sees either all of a conversion's bookkeeping or none of it.
"""

import logging
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from conversions.delivery.engine import AttemptLog
from conversions.models import (
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerChunk,
    RetriggerRun,
    RunItem,
)
from conversions.results import RunCounts

logger = logging.getLogger(__name__)

EXCERPT_COLUMN_LIMIT = 4000


@dataclass
class FinishedPair:
    conversion_id: int
    postback_id: int
    affiliate_id: int
    event_id: str
    method: str
    masked_url: str
    attempts: list[AttemptLog]


@dataclass
class RunRecorder:
    """Buffers what a worker finished and writes it in one transaction per flush."""

    run: RetriggerRun | None
    worker: str = ""
    counts: RunCounts = field(default_factory=RunCounts)  # totals seen by this recorder
    _pairs: list[FinishedPair] = field(default_factory=list)
    _items: list[RunItem] = field(default_factory=list)
    _delta: RunCounts = field(default_factory=RunCounts)
    _done_chunks: list[int] = field(default_factory=list)

    def pair_finished(self, pair: FinishedPair) -> None:
        self._pairs.append(pair)

    def conversion_counted(self, conversion_id: int, outcome: str, delta: RunCounts) -> None:
        self.counts.add(delta)
        self._delta.add(delta)
        if self.run is not None:
            self._items.append(RunItem(run=self.run, conversion_id=conversion_id, outcome=outcome))

    def chunk_done(self, chunk_id: int) -> None:
        self._done_chunks.append(chunk_id)

    def flush(self, *, chunk_ids: list[int] = ()) -> bool:
        """Write what is buffered and beat the heartbeat; True if a cancel was requested."""
        if self.run is None:
            self._reset()
            return False
        now = timezone.now()
        with transaction.atomic():
            if self._pairs:
                DeliveryAttempt.objects.bulk_create(
                    self._attempt_rows(now), batch_size=500
                )
            if self._items:
                RunItem.objects.bulk_create(self._items, batch_size=500, ignore_conflicts=True)
                # A pair's claim lives until its conversion is counted: a worker taking
                # over after a crash then finds either the claim or the counted item.
                DeliveryClaim.objects.filter(
                    run=self.run, conversion_id__in=[item.conversion_id for item in self._items]
                ).delete()
            delta = self._delta
            updates = {"heartbeat_at": now}
            for name in ("processed", "retriggered", "delivered", "failed", "skipped"):
                if value := getattr(delta, name):
                    updates[name] = F(name) + value
            for reason, value in delta.skipped_by_reason.items():
                updates[f"skipped_{reason}"] = F(f"skipped_{reason}") + value
            RetriggerRun.objects.filter(pk=self.run.pk).update(**updates)
            if self._done_chunks:
                RetriggerChunk.objects.filter(pk__in=self._done_chunks).update(
                    status=RetriggerChunk.Status.DONE, heartbeat_at=now
                )
            if chunk_ids:
                RetriggerChunk.objects.filter(
                    pk__in=chunk_ids, status=RetriggerChunk.Status.RUNNING
                ).update(heartbeat_at=now)
        self._reset()
        return RetriggerRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()

    def _attempt_rows(self, now) -> list[DeliveryAttempt]:
        rows = []
        for pair in self._pairs:
            last = len(pair.attempts)
            for log in pair.attempts:
                outcome = log.outcome
                rows.append(
                    DeliveryAttempt(
                        run=self.run,
                        conversion_id=pair.conversion_id,
                        postback_id=pair.postback_id,
                        affiliate_id=pair.affiliate_id,
                        event_id=pair.event_id,
                        attempt_number=log.attempt_number,
                        method=pair.method,
                        url=pair.masked_url,
                        status_code=outcome.status_code,
                        error=outcome.error or "",
                        error_detail=(outcome.error_detail or "")[:500],
                        delivered=outcome.delivered,
                        final=log.attempt_number == last,
                        duration_ms=max(0, int(outcome.duration_ms)),
                        response_excerpt=(outcome.response_excerpt or "")[:EXCERPT_COLUMN_LIMIT],
                        created_at=log.started_at or now,
                    )
                )
        return rows

    def _reset(self) -> None:
        self._pairs = []
        self._items = []
        self._delta = RunCounts()
        self._done_chunks = []
