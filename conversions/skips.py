"""Skip rules per (conversion, applicable postback) pair, decided a batch at a time.

Contract §4. Normally skipped, fired anyway with force: `rejected`, `already_delivered`.
Always skipped: `affiliate_inactive`, `no_postback`, `in_progress`. A pair with several
reasons counts under the first of the `SkipReason` order. Every query here is per batch,
never per conversion.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conversions.models import (
    Conversion,
    DeliveryAttempt,
    DeliveryClaim,
    Postback,
    SkipReason,
)

Pair = tuple[int, int]  # (conversion_id, postback_id)

# What planning and the macros read of a conversion (`delivery.macros.macro_values`).
CONVERSION_FIELDS = (
    "id",
    "account_id",
    "affiliate_id",
    "brand_id",
    "traffic_source_id",
    "conversion_type_id",
    "click_id",
    "transaction_id",
    "status",
    "payout",
    "revenue",
    "currency",
    "converted_at",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
)


@dataclass(frozen=True, slots=True)
class AffiliateState:
    is_active: bool


@dataclass(frozen=True, slots=True)
class ConversionTypeName:
    name: str


class ConversionRow:
    """A conversion's delivery fields as plain attributes, without a model instance.

    Reads like a `Conversion` loaded with `select_related("affiliate",
    "conversion_type")` as far as planning and the macros go: `pk`, the `*_id` columns,
    `affiliate.is_active` and `conversion_type.name`.
    """

    __slots__ = (*CONVERSION_FIELDS, "affiliate", "conversion_type")

    @property
    def pk(self) -> int:
        return self.id


def conversion_rows(ids: Sequence[int]) -> dict[int, ConversionRow]:
    """The conversions of `ids` that exist, by id, in one query."""
    affiliates = {True: AffiliateState(True), False: AffiliateState(False)}
    types: dict[str, ConversionTypeName] = {}
    rows = {}
    for *values, is_active, type_name in (
        Conversion.objects.filter(id__any_of=ids)
        .order_by()
        .values_list(*CONVERSION_FIELDS, "affiliate__is_active", "conversion_type__name")
    ):
        row = ConversionRow()
        for name, value in zip(CONVERSION_FIELDS, values, strict=True):
            setattr(row, name, value)
        row.affiliate = affiliates[is_active]
        if type_name not in types:
            types[type_name] = ConversionTypeName(type_name)
        row.conversion_type = types[type_name]
        rows[row.id] = row
    return rows


@dataclass
class PlannedConversion:
    conversion: Conversion | ConversionRow
    fire: list[Postback] = field(default_factory=list)
    # (postback_id or None when no postback applies, reason)
    skipped: list[tuple[int | None, str]] = field(default_factory=list)


class PostbackDirectory:
    """Active postbacks by affiliate, loaded once per affiliate for a whole run."""

    def __init__(self) -> None:
        self._by_affiliate: dict[int, list[Postback]] = {}

    def load(self, affiliate_ids: Iterable[int]) -> None:
        missing = {pk for pk in affiliate_ids if pk not in self._by_affiliate}
        if not missing:
            return
        for pk in missing:
            self._by_affiliate[pk] = []
        for postback in Postback.objects.filter(affiliate_id__in=missing, is_active=True).order_by(
            "id"
        ):
            self._by_affiliate[postback.affiliate_id].append(postback)

    def applicable(self, conversion: Conversion | ConversionRow) -> list[Postback]:
        return [
            postback
            for postback in self._by_affiliate.get(conversion.affiliate_id, ())
            if postback.conversion_type_id in (None, conversion.conversion_type_id)
        ]


def plan_batch(
    conversions: Sequence[Conversion | ConversionRow],
    *,
    directory: PostbackDirectory,
    force: bool,
    run_id: int | None,
) -> list[PlannedConversion]:
    """Decide, for each conversion of the batch, which pairs fire and which are skipped.

    `conversions` are `conversion_rows()` or models with `affiliate` loaded
    (select_related). Claims held by `run_id`
    itself (a run taken over after a crash) do not count as `in_progress`.
    """
    directory.load({c.affiliate_id for c in conversions})
    ids = [c.pk for c in conversions]
    claimed_elsewhere = _claimed_pairs(ids, excluding_run=run_id)
    delivered = set() if force else _delivered_pairs(ids)

    planned = []
    for conversion in conversions:
        plan = PlannedConversion(conversion)
        postbacks = directory.applicable(conversion)
        if not conversion.affiliate.is_active:
            plan.skipped = [(p.pk, SkipReason.AFFILIATE_INACTIVE) for p in postbacks] or [
                (None, SkipReason.AFFILIATE_INACTIVE)
            ]
        elif not postbacks:
            plan.skipped = [(None, SkipReason.NO_POSTBACK)]
        else:
            for postback in postbacks:
                reason = _pair_reason(conversion, postback, claimed_elsewhere, delivered, force)
                if reason is None:
                    plan.fire.append(postback)
                else:
                    plan.skipped.append((postback.pk, reason))
        planned.append(plan)
    return planned


def _pair_reason(
    conversion: Conversion | ConversionRow,
    postback: Postback,
    claimed_elsewhere: set[Pair],
    delivered: set[Pair],
    force: bool,
) -> str | None:
    pair = (conversion.pk, postback.pk)
    if pair in claimed_elsewhere:
        return SkipReason.IN_PROGRESS
    if not force and conversion.status == Conversion.Status.REJECTED:
        return SkipReason.REJECTED
    if not force and pair in delivered:
        return SkipReason.ALREADY_DELIVERED
    return None


def _claimed_pairs(conversion_ids: list[int], *, excluding_run: int | None) -> set[Pair]:
    claims = DeliveryClaim.objects.filter(conversion_id__any_of=conversion_ids)
    if excluding_run is not None:
        claims = claims.exclude(run_id=excluding_run)
    return set(claims.values_list("conversion_id", "postback_id"))


def _delivered_pairs(conversion_ids: list[int]) -> set[Pair]:
    return set(
        DeliveryAttempt.objects.filter(conversion_id__any_of=conversion_ids, delivered=True)
        .values_list("conversion_id", "postback_id")
        .distinct()
    )
