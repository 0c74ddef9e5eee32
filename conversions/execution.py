"""Turn batches of selected conversions into fired pairs, outcomes and counters.

Used by every kind of run: the request-sized run, the foreground command and the
background workers. The delivery engine pulls jobs from `_jobs()` lazily, so only a
bounded window of conversions is in memory whatever the size of the run.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from django.utils import timezone

from conversions.bulk import insert_claims
from conversions.delivery.engine import AttemptLog, DeliveryEngine, Job
from conversions.delivery.transport import prepare_postback
from conversions.models import (
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerRun,
    RunItem,
    SkipReason,
)
from conversions.recording import FinishedPair, FlushSignal, RunRecorder
from conversions.results import ConversionResult, Outcome, PairResult, RunCounts, public_error
from conversions.skips import (
    ConversionRow,
    PlannedConversion,
    PostbackDirectory,
    conversion_rows,
    plan_batch,
)

logger = logging.getLogger(__name__)

# Conversions read, planned and claimed per round of statements within a chunk.
SLICE_SIZE = 250


@dataclass(frozen=True)
class Batch:
    conversion_ids: list[int]
    chunk_id: int | None = None


@dataclass
class _Tracked:
    conversion_id: int
    chunk_id: int | None
    pairs: list[PairResult] = field(default_factory=list)
    pending: int = 0
    fired: int = 0


class RunExecutor:
    def __init__(
        self,
        *,
        run: RetriggerRun | None,
        force: bool,
        dry_run: bool,
        keep_results: bool,
        recorder: RunRecorder,
        progress: Callable[[RunCounts], None] | None = None,
        engine: DeliveryEngine | None = None,
    ) -> None:
        self.run = run
        self.force = force
        self.dry_run = dry_run
        self.keep_results = keep_results
        self.recorder = recorder
        self.progress = progress
        self.engine = engine
        self.cancelled = False
        self.lost = False  # another worker took one of our chunks over
        self._directory = PostbackDirectory()
        self._tracked: dict[int, _Tracked] = {}
        self._chunk_left: dict[int, int] = {}
        self._results: dict[int, ConversionResult] = {}
        self._order: list[int] = []
        self._active_chunks: list[int] = []

    # -- public ------------------------------------------------------------------------

    def execute(self, batches: Iterable[Batch]) -> list[ConversionResult] | None:
        if self.dry_run:
            for _ in self._jobs(batches):
                raise AssertionError("a dry run fires nothing")
        else:
            engine = self.engine or DeliveryEngine()
            engine.run(
                self._jobs(batches),
                on_done=self._pair_done,
                on_tick=self._tick,
                should_stop=lambda: self.cancelled or self.lost,
            )
            if self.cancelled and not self.lost:
                self._count_partly_fired()
        self._tick()
        if not self.keep_results:
            return None
        return [self._results[pk] for pk in self._order if pk in self._results]

    # -- job generation ------------------------------------------------------------------

    def _jobs(self, batches: Iterable[Batch]) -> Iterator[Job]:
        for batch in batches:
            if self.cancelled or self.lost:
                return
            if batch.chunk_id is not None:
                self._active_chunks.append(batch.chunk_id)
            yield from self._batch_jobs(batch)

    def _batch_jobs(self, batch: Batch) -> Iterator[Job]:
        """A batch's jobs, read and claimed a slice at a time: the first requests leave
        after a slice's statements, not the whole chunk's."""
        chunk = batch.chunk_id
        if chunk is not None:
            # Held open (+1) until every slice is planned, so the chunk cannot count as
            # done while later slices are still unread.
            self._chunk_left[chunk] = 1
        ids = batch.conversion_ids
        for start in range(0, len(ids), SLICE_SIZE):
            yield from self._slice_jobs(ids[start : start + SLICE_SIZE], chunk)
        if chunk is not None:
            self._chunk_release(chunk)

    def _slice_jobs(self, ids: list[int], chunk: int | None) -> Iterator[Job]:
        if self.run is not None and not self.dry_run:
            counted = set(
                RunItem.objects.filter(run=self.run, conversion_id__any_of=ids).values_list(
                    "conversion_id", flat=True
                )
            )
            ids = [pk for pk in ids if pk not in counted]
        by_id = conversion_rows(ids)
        conversions = [by_id[pk] for pk in ids if pk in by_id]
        if self.keep_results:
            self._order.extend(c.pk for c in conversions)
        planned = plan_batch(
            conversions,
            directory=self._directory,
            force=self.force,
            run_id=self.run.pk if self.run is not None else None,
        )
        finished_earlier: dict[tuple[int, int], PairResult] = {}
        if not self.dry_run:
            self._claim(planned)
            finished_earlier = self._finished_earlier([c.pk for c in conversions])

        if chunk is not None:
            self._chunk_left[chunk] += len(planned)
        for plan in planned:
            tracked = _Tracked(plan.conversion.pk, chunk)
            self._tracked[plan.conversion.pk] = tracked
            tracked.pairs.extend(
                PairResult(postback_id=pb, outcome=Outcome.SKIPPED, error=reason)
                for pb, reason in plan.skipped
            )
            jobs = []
            for postback in plan.fire:
                pair = (plan.conversion.pk, postback.pk)
                tracked.fired += 1
                if self.dry_run:
                    tracked.pairs.append(PairResult(postback.pk, Outcome.WOULD_FIRE))
                elif pair in finished_earlier:
                    tracked.pairs.append(finished_earlier[pair])
                else:
                    jobs.append(self._job(plan.conversion, postback))
            # Every pair is counted as pending before the first is handed out, so the
            # conversion cannot complete while its later pairs are still unsent.
            tracked.pending = len(jobs)
            if not jobs:
                self._complete(tracked)
            yield from jobs

    def _job(self, conversion: ConversionRow, postback) -> Job:
        event_id = DeliveryAttempt.event_id_text(conversion.pk, postback.pk)
        prepared = prepare_postback(
            postback,
            conversion,
            conversion_type_name=conversion.conversion_type.name,
            event_id=event_id,
        )
        return Job(key=(conversion.pk, postback.pk, postback.affiliate_id), prepared=prepared)

    def _claim(self, planned: list[PlannedConversion]) -> None:
        """Claim the pairs about to fire; pairs another run claimed first are in progress."""
        if self.run is None:
            return
        wanted = [(plan.conversion.pk, pb.pk) for plan in planned for pb in plan.fire]
        if not wanted:
            return
        owned = insert_claims(
            DeliveryClaim, run_id=self.run.pk, pairs=wanted, claimed_at=timezone.now()
        )
        if owned is None or len(owned) < len(wanted):
            # Some were claimed already: by another run (in progress), or by this one
            # before a takeover (ours to fire).
            owned = set(
                DeliveryClaim.objects.filter(
                    run=self.run, conversion_id__any_of=list({c for c, _ in wanted})
                ).values_list("conversion_id", "postback_id")
            )
        for plan in planned:
            lost = [pb for pb in plan.fire if (plan.conversion.pk, pb.pk) not in owned]
            if lost:
                plan.fire = [pb for pb in plan.fire if pb not in lost]
                plan.skipped.extend((pb.pk, SkipReason.IN_PROGRESS) for pb in lost)

    def _finished_earlier(self, conversion_ids: list[int]) -> dict[tuple[int, int], PairResult]:
        """Pairs of this run whose last try is already recorded (a run taken over)."""
        if self.run is None:
            return {}
        rows = DeliveryAttempt.objects.filter(
            run=self.run, conversion_id__any_of=conversion_ids, final=True
        ).values_list(
            "conversion_id", "postback_id", "delivered", "status_code", "attempt_number", "error"
        )
        return {
            (conversion_id, postback_id): PairResult(
                postback_id,
                Outcome.DELIVERED if delivered else Outcome.FAILED,
                status_code,
                attempts,
                None if delivered else public_error(error),
            )
            for conversion_id, postback_id, delivered, status_code, attempts, error in rows
        }

    # -- completion --------------------------------------------------------------------

    def _pair_done(self, job: Job, attempts: list[AttemptLog]) -> None:
        conversion_id, postback_id, affiliate_id = job.key
        last = attempts[-1].outcome
        self.recorder.pair_finished(
            FinishedPair(
                conversion_id=conversion_id,
                postback_id=postback_id,
                affiliate_id=affiliate_id,
                event_id=job.prepared.event_id,
                method=job.prepared.method,
                masked_url=job.prepared.masked_url,
                attempts=attempts,
            )
        )
        tracked = self._tracked[conversion_id]
        tracked.pairs.append(
            PairResult(
                postback_id,
                Outcome.DELIVERED if last.delivered else Outcome.FAILED,
                last.status_code,
                len(attempts),
                None if last.delivered else public_error(last.error),
            )
        )
        tracked.pending -= 1
        if tracked.pending == 0:
            self._complete(tracked)

    def _complete(self, tracked: _Tracked) -> None:
        self._tracked.pop(tracked.conversion_id, None)
        fired = [p for p in tracked.pairs if p.outcome != Outcome.SKIPPED]
        if not fired:
            outcome = Outcome.SKIPPED
        elif any(p.outcome == Outcome.FAILED for p in fired):
            outcome = Outcome.FAILED
        elif self.dry_run:
            outcome = Outcome.WOULD_FIRE
        else:
            outcome = Outcome.DELIVERED
        delta = RunCounts(
            processed=1,
            retriggered=1 if fired else 0,
            delivered=1 if outcome == Outcome.DELIVERED else 0,
            failed=1 if outcome == Outcome.FAILED else 0,
            skipped=1 if outcome == Outcome.SKIPPED else 0,
        )
        for pair in tracked.pairs:
            if pair.outcome == Outcome.SKIPPED:
                delta.skipped_by_reason[pair.error] = delta.skipped_by_reason.get(pair.error, 0) + 1
        stored_outcome = outcome if outcome != Outcome.WOULD_FIRE else Outcome.DELIVERED
        self.recorder.conversion_counted(tracked.conversion_id, stored_outcome, delta)
        if self.keep_results:
            self._results[tracked.conversion_id] = ConversionResult(
                tracked.conversion_id, outcome, tuple(tracked.pairs)
            )
        if tracked.chunk_id is not None:
            self._chunk_release(tracked.chunk_id)

    def _chunk_release(self, chunk: int) -> None:
        """One conversion of the chunk (or its hold) is done; the last one ends it."""
        self._chunk_left[chunk] -= 1
        if self._chunk_left[chunk] == 0:
            del self._chunk_left[chunk]
            self.recorder.chunk_done(chunk)
            self._active_chunks.remove(chunk)

    def _count_partly_fired(self) -> None:
        """After a cancel: conversions with some pairs fired count with those pairs."""
        for tracked in list(self._tracked.values()):
            if len(tracked.pairs) > sum(p.outcome == Outcome.SKIPPED for p in tracked.pairs):
                tracked.pending = 0
                self._complete(tracked)

    def record_after_interrupt(self) -> None:
        """After Ctrl-C: write what was answered (partly fired conversions count with the
        pairs they fired), as a cancel would, before the run is finished."""
        if self.run is None or self.lost:
            return
        self._count_partly_fired()
        self.recorder.flush(chunk_ids=list(self._active_chunks))

    def release_claims(self) -> None:
        """Drop the claims of conversions this worker started but will not count.

        Only this worker's own conversions (its chunks) are touched, so claims of pairs
        other workers of the run still have in flight stay until those finish.
        """
        if self.run is not None and self._tracked and not self.lost:
            uncounted = list(self._tracked)
            DeliveryClaim.objects.filter(run=self.run, conversion_id__any_of=uncounted).delete()

    def _tick(self) -> None:
        signal = self.recorder.flush(chunk_ids=list(self._active_chunks))
        if signal == FlushSignal.CANCEL:
            self.cancelled = True
        elif signal == FlushSignal.LOST:
            self.lost = True
        if self.progress is not None:
            self.progress(self.recorder.counts)
