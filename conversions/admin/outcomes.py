"""Each conversion's last delivery outcome, computed in SQL.

The change list shows it per row; one correlated subquery per column (served by the
`attempt_pair_idx` index on (conversion, postback)) keeps it to the page's one query
instead of a query per row.
"""

from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.templatetags.static import static
from django.utils.html import format_html
from django.utils.safestring import SafeString

from conversions.admin.scoping import ChoiceListFilter
from conversions.models import Conversion, DeliveryAttempt

DELIVERED = "delivered"
FAILED = "failed"
NEVER = "never"


def _final_attempts() -> QuerySet:
    return DeliveryAttempt.objects.filter(conversion=OuterRef("pk"), final=True)


def _last_final(field: str) -> Subquery:
    return Subquery(_final_attempts().order_by("-id").values(field)[:1])


def with_last_outcome(queryset: QuerySet) -> QuerySet:
    """Annotate `last_delivered`, `last_status_code`, `last_error` of the last final try."""
    return queryset.annotate(
        last_delivered=_last_final("delivered"),
        last_status_code=_last_final("status_code"),
        last_error=_last_final("error"),
    )


def filter_last_outcome(queryset: QuerySet, outcome: str) -> QuerySet:
    if outcome == NEVER:
        return queryset.filter(~Exists(_final_attempts()))
    if outcome in (DELIVERED, FAILED):
        # `alias` keeps the subquery out of the SELECT list: the action gets this
        # queryset too, and it only needs the ids.
        return queryset.alias(_last_delivered=_last_final("delivered")).filter(
            _last_delivered=(outcome == DELIVERED)
        )
    return queryset


def outcome_label(*, delivered: bool | None, status_code: int | None, error: str) -> SafeString:
    if delivered is None:
        return format_html('<span class="quiet">{}</span>', "never sent")
    detail = status_code if status_code is not None else (error or "")
    label = DELIVERED if delivered else FAILED
    icon = "yes" if delivered else "no"
    return format_html(
        '<img src="{}" alt=""> {} {}', static(f"admin/img/icon-{icon}.svg"), label, detail
    )


def last_outcome_of(conversion: Conversion) -> SafeString:
    """For one object (the change form): one query, not on the change list's path."""
    if hasattr(conversion, "last_delivered"):
        return outcome_label(
            delivered=conversion.last_delivered,
            status_code=conversion.last_status_code,
            error=conversion.last_error or "",
        )
    attempt = (
        DeliveryAttempt.objects.filter(conversion=conversion, final=True)
        .order_by("-id")
        .only("delivered", "status_code", "error")
        .first()
    )
    if attempt is None:
        return outcome_label(delivered=None, status_code=None, error="")
    return outcome_label(
        delivered=attempt.delivered, status_code=attempt.status_code, error=attempt.error
    )


class LastOutcomeFilter(ChoiceListFilter):
    title = "last delivery outcome"
    parameter_name = "last_outcome"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [(DELIVERED, "Delivered"), (FAILED, "Failed"), (NEVER, "Never sent")]

    def filter(self, queryset: QuerySet, value: str) -> QuerySet:
        return filter_last_outcome(queryset, value)
