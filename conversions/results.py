"""Small result objects the service returns, and the JSON document every door prints.

The API, the command's `--json` and the admin all report the same document, so it is
built here once.
"""

from dataclasses import dataclass, field
from typing import Any

from conversions.models import RetriggerRun, SkipReason


class Outcome:
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    WOULD_FIRE = "would_fire"


def public_error(code: str | None) -> str:
    """The short error code a result or a stored attempt reports (contract §5): an URL
    that cannot be sent is a connection that could not be made; the attempt's detail
    keeps the finer reason."""
    if code == "invalid_url":
        return "connection_error"
    return code or "http_status"


@dataclass(frozen=True)
class PairResult:
    postback_id: int | None
    outcome: str
    status_code: int | None = None
    attempts: int = 0
    error: str | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "postbackId": self.postback_id,
            "outcome": self.outcome,
            "statusCode": self.status_code,
            "attempts": self.attempts,
            "error": self.error,
        }


@dataclass(frozen=True)
class ConversionResult:
    conversion_id: int
    outcome: str
    postbacks: tuple[PairResult, ...]

    def to_document(self) -> dict[str, Any]:
        return {
            "conversionId": self.conversion_id,
            "outcome": self.outcome,
            "postbacks": [pair.to_document() for pair in self.postbacks],
        }


@dataclass
class RunCounts:
    """Counters of a run, kept in memory for dry runs and mirrored from the row otherwise."""

    matched: int = 0
    selected: int = 0
    processed: int = 0
    retriggered: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, other: "RunCounts") -> None:
        for name in ("processed", "retriggered", "delivered", "failed", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.skipped_by_reason.items():
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + count

    @classmethod
    def from_run(cls, run: RetriggerRun) -> "RunCounts":
        return cls(
            matched=run.matched,
            selected=run.selected,
            processed=run.processed,
            retriggered=run.retriggered,
            delivered=run.delivered,
            failed=run.failed,
            skipped=run.skipped,
            skipped_by_reason=run.skipped_by_reason,
        )


def ordered_reasons(counts: dict[str, int]) -> dict[str, int]:
    return {reason.value: counts[reason.value] for reason in SkipReason if counts.get(reason.value)}


def run_document(
    *, run: RetriggerRun | None, counts: RunCounts | None = None, with_progress: bool = False
) -> dict[str, Any]:
    """The `run` object of the API. A dry run has no row: id null, status `dry_run`."""
    if run is not None:
        counts = RunCounts.from_run(run)
    assert counts is not None
    document: dict[str, Any] = {
        "id": run.pk if run is not None else None,
        "status": run.status if run is not None else "dry_run",
        "matched": counts.matched,
        "selected": counts.selected,
    }
    if with_progress:
        document["processed"] = counts.processed
    document.update(
        {
            "retriggered": counts.retriggered,
            "delivered": counts.delivered,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "skippedByReason": ordered_reasons(counts.skipped_by_reason),
        }
    )
    if run is not None and with_progress:
        document.update(
            {
                "createdAt": _iso(run.created_at),
                "startedAt": _iso(run.started_at),
                "finishedAt": _iso(run.finished_at),
                # A running run whose heartbeat is old has lost its workers; the
                # sweeper of any live worker takes it over.
                "heartbeatAt": _iso(run.heartbeat_at),
                "createdBy": run.actor,
                "force": run.force,
            }
        )
    return document


def _iso(value) -> str | None:
    if value is None:
        return None
    from conversions.criteria import format_datetime

    return format_datetime(value)


@dataclass
class RetriggerResult:
    """What `conversions_retrigger` returns to every door.

    `results` is None when the run went to the background (`queued`).
    """

    info: dict[str, Any]
    run: RetriggerRun | None
    counts: RunCounts
    results: list[ConversionResult] | None
    dry_run: bool = False

    @property
    def queued(self) -> bool:
        # A dry run keeps no results when asked not to, but is never queued.
        return not self.dry_run and self.results is None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "info": self.info,
            "run": run_document(run=self.run, counts=self.counts, with_progress=self.queued),
        }
        if self.results is not None:
            document["results"] = [result.to_document() for result in self.results]
        return document
