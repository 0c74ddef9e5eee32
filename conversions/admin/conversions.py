"""The Conversion change list: filters, search, last outcome, and the re-trigger action.

Built for tables of hundreds of thousands of rows: no full count of the unfiltered
table, related columns joined in the page query, the last outcome annotated on the page
only, exact-match search that can use the indexes on id and click id.
"""

import contextlib
import re
import uuid

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from conversions.admin import retrigger
from conversions.admin.outcomes import LastOutcomeFilter, last_outcome_of, with_last_outcome
from conversions.admin.scoping import (
    ScopedChangeList,
    ScopedModelAdmin,
    ScopedRelatedFilter,
    is_account_admin,
)
from conversions.models import INT64_MAX, Conversion

MAX_SEARCH_TERMS = 100
_TERM_SPLIT = re.compile(r"[\s,]+")


class ConversionChangeList(ScopedChangeList):
    def get_results(self, request: HttpRequest) -> None:
        # Annotate here rather than in get_queryset: the page's rows need the outcome,
        # the action's queryset (the same filters, built by get_queryset) does not.
        # count() drops the unused annotations, so the paginator's count stays cheap.
        self.queryset = with_last_outcome(self.queryset)
        super().get_results(request)


def search_q(search_term: str) -> Q | None:
    """Exact match on id, click id or transaction id; several terms are OR-ed.

    Terms are typed before they reach the ORM: a word never becomes an id lookup, so
    nothing raises and the id and click id indexes stay usable.
    """
    terms = [term for term in _TERM_SPLIT.split(search_term.strip()) if term]
    if not terms:
        return None
    q = Q()
    for term in terms[:MAX_SEARCH_TERMS]:
        q |= Q(transaction_id=term)
        if term.isascii() and term.isdigit() and 0 < int(term) <= INT64_MAX:
            q |= Q(pk=int(term))
        with contextlib.suppress(ValueError):
            q |= Q(click_id=uuid.UUID(term))
    return q


@admin.register(Conversion)
class ConversionAdmin(ScopedModelAdmin):
    account_path = "account_id"
    actions = ["retrigger_postbacks"]
    list_display = (
        "id",
        "converted_at",
        "status",
        "conversion_type",
        "account",
        "affiliate",
        "brand",
        "traffic_source",
        "payout",
        "revenue",
        "currency",
        "last_outcome",
    )
    list_select_related = ("conversion_type", "account", "affiliate", "brand", "traffic_source")
    list_filter = (
        "status",
        # Every related filter is scoped: it also applies when it has a single choice.
        ("conversion_type", ScopedRelatedFilter),
        ("account", ScopedRelatedFilter),
        ("affiliate", ScopedRelatedFilter),
        ("brand", ScopedRelatedFilter),
        ("traffic_source", ScopedRelatedFilter),
        LastOutcomeFilter,
    )
    date_hierarchy = "converted_at"
    search_fields = ("id", "click_id", "transaction_id")  # see get_search_results
    search_help_text = "Exact conversion id, click id or transaction id (several: space-separated)."
    # A second COUNT(*) over the whole table on every filtered page is not worth it.
    show_full_result_count = False
    list_per_page = 100
    readonly_fields = ("last_outcome",)

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return ConversionChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        q = search_q(search_term)
        return (queryset if q is None else queryset.filter(q)), False

    @admin.display(description="last delivery")
    def last_outcome(self, obj: Conversion) -> SafeString:
        return last_outcome_of(obj)

    @admin.action(description="Re-trigger postbacks", permissions=["retrigger"])
    def retrigger_postbacks(self, request: HttpRequest, queryset: QuerySet):
        return retrigger.retrigger_postbacks(self, request, queryset)

    def has_retrigger_permission(self, request: HttpRequest) -> bool:
        # Account admins and superusers only; the queryset is already limited to their
        # accounts, and the service checks the actor's scope once more.
        return is_account_admin(request)
