"""Read-only pages for delivery attempts (the audit trail) and live delivery claims."""

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from conversions.admin.scoping import ChoiceListFilter, ScopedModelAdmin, ScopedRelatedFilter
from conversions.models import DeliveryAttempt, DeliveryClaim


class AttemptOutcomeFilter(ChoiceListFilter):
    title = "outcome"
    parameter_name = "outcome"

    CHOICES = {
        "delivered": Q(delivered=True),
        "failed": Q(delivered=False, final=True),
        "retried": Q(delivered=False, final=False),
    }

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [
            ("delivered", "Delivered (2xx)"),
            ("failed", "Failed (final)"),
            ("retried", "Failed, retried"),
        ]

    def filter(self, queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(self.CHOICES[value])


class StatusCodeFilter(admin.SimpleListFilter):
    """Status classes; a DISTINCT over a big attempts table per page view is not worth it.

    An exact code still works from the URL: `?status_code=503`.
    """

    title = "status code"
    parameter_name = "status_code"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        classes = [(f"{n}xx", f"{n}xx") for n in range(1, 6)]
        return [*classes, ("none", "No response")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if value == "none":
            return queryset.filter(status_code__isnull=True)
        if len(value) == 3 and value.endswith("xx") and value[0] in "12345":
            low = int(value[0]) * 100
            return queryset.filter(status_code__gte=low, status_code__lt=low + 100)
        if value.isascii() and value.isdigit() and len(value) == 3:
            return queryset.filter(status_code=int(value))
        return queryset.none()


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ScopedModelAdmin):
    account_path = "conversion__account_id"
    list_display = (
        "id",
        "created_at",
        "run_link",
        "conversion_link",
        "postback",
        "affiliate",
        "attempt_number",
        "outcome",
        "status_code",
        "error",
        "duration_ms",
        "final",
    )
    list_select_related = ("postback", "affiliate")
    list_filter = (
        AttemptOutcomeFilter,
        StatusCodeFilter,
        "error",
        "final",
        ("affiliate", ScopedRelatedFilter),
    )
    date_hierarchy = "created_at"
    search_fields = ("=run__id", "=conversion__id", "=event_id")
    search_help_text = "Exact run id, conversion id or event id."
    show_full_result_count = False
    readonly_fields = ("response_display",)
    exclude = ("response_excerpt",)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj: DeliveryAttempt) -> SafeString:
        url = reverse("admin:conversions_retriggerrun_change", args=[obj.run_id])
        return format_html('<a href="{}">#{}</a>', url, obj.run_id)

    @admin.display(description="conversion", ordering="conversion_id")
    def conversion_link(self, obj: DeliveryAttempt) -> SafeString:
        url = reverse("admin:conversions_conversion_change", args=[obj.conversion_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversion_id)

    @admin.display(description="outcome")
    def outcome(self, obj: DeliveryAttempt) -> str:
        if obj.delivered:
            return "delivered"
        return "failed" if obj.final else "retried"

    @admin.display(description="response excerpt")
    def response_display(self, obj: DeliveryAttempt) -> SafeString:
        return format_html("<pre>{}</pre>", obj.response_excerpt)


@admin.register(DeliveryClaim)
class DeliveryClaimAdmin(ScopedModelAdmin):
    """Pairs being fired right now: internal, superusers only, for diagnosing a run."""

    superuser_only = True
    list_display = ("id", "conversion_id", "postback_id", "run_id", "claimed_at")
    search_fields = ("=run__id", "=conversion__id")
    show_full_result_count = False
