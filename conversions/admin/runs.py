"""Read-only pages for re-trigger runs and their bookkeeping.

A run is visible, as in the API, to its creator, to superusers and to admins of every
account it touches. A running run's page refreshes itself (a meta refresh in its
template): the admin session is not an API token, and a reload needs no JavaScript.
"""

import json

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from conversions.access import Actor, actor_for_user
from conversions.admin.scoping import ScopedModelAdmin, account_scope, is_account_admin
from conversions.models import INT64_MAX, DeliveryAttempt, RetriggerChunk, RetriggerRun, RunItem
from conversions.results import ordered_reasons

RECENT_ATTEMPTS = 20


def progress_bar(run: RetriggerRun) -> SafeString:
    total = run.selected or 0
    done = min(run.processed or 0, total) if total else 0
    percent = round(100 * done / total) if total else (100 if run.is_final else 0)
    return format_html(
        '<progress value="{}" max="{}" aria-label="progress">{}%</progress> {} / {} ({}%)',
        done,
        max(total, 1),
        percent,
        done,
        total,
        percent,
    )


@admin.register(RetriggerRun)
class RetriggerRunAdmin(ScopedModelAdmin):
    list_display = (
        "id",
        "created_at",
        "status",
        "source",
        "actor",
        "force",
        "progress",
        "selected",
        "delivered",
        "failed",
        "skipped",
    )
    list_filter = ("status", "source", "force")
    actions = ["cancel_runs"]
    date_hierarchy = "created_at"
    search_fields = ("=id", "actor")
    show_full_result_count = False
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "status",
                    "progress",
                    "source",
                    "actor",
                    "created_by",
                    "force",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "heartbeat_at",
                    "cancel_requested",
                    "error",
                )
            },
        ),
        ("Criteria", {"fields": ("criteria_display", "accounts")}),
        (
            "Counts",
            {
                "fields": (
                    "matched",
                    "selected",
                    "processed",
                    "retriggered",
                    "delivered",
                    "failed",
                    "skipped",
                    "skipped_by_reason_display",
                )
            },
        ),
    )
    readonly_fields = ("progress", "criteria_display", "skipped_by_reason_display")

    def scope_queryset(
        self, request: HttpRequest, queryset: QuerySet, scope: frozenset[int]
    ) -> QuerySet:
        # The API's rule, from the same function, so both doors show the same runs.
        from conversions.services import runs_visible_to

        actor = Actor(user=request.user, label=request.user.get_username(), admin_account_ids=scope)
        return queryset.filter(pk__in=runs_visible_to(actor).values("pk"))

    @admin.display(description="progress")
    def progress(self, obj: RetriggerRun) -> SafeString:
        return progress_bar(obj)

    @admin.display(description="criteria")
    def criteria_display(self, obj: RetriggerRun) -> SafeString:
        # Compact and wrapped: a run of ticked rows carries up to a page of ids.
        text = json.dumps(obj.criteria, sort_keys=True, separators=(", ", ": "))
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)

    @admin.display(description="skipped by reason (postbacks)")
    def skipped_by_reason_display(self, obj: RetriggerRun) -> str:
        reasons = ordered_reasons(obj.skipped_by_reason)
        return ", ".join(f"{reason}: {count}" for reason, count in reasons.items()) or "-"

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Pairs not yet fired stay unfired; finished runs are left as they are."""
        from conversions.services import run_cancel

        actor = actor_for_user(request.user)
        active = queryset.filter(
            status__in=[RetriggerRun.Status.QUEUED, RetriggerRun.Status.RUNNING]
        )
        cancelled = 0
        for run in active.iterator():
            run_cancel(run=run, actor=actor)
            cancelled += 1
        self.message_user(request, f"Cancellation requested for {cancelled} run(s).")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        # Whoever may see a run may cancel it, as in the API; the queryset is scoped.
        return is_account_admin(request)

    def change_view(self, request: HttpRequest, object_id: str, form_url="", extra_context=None):
        # The attempts table needs the request (tenant scope), so it comes in through the
        # context instead of a readonly field, which only sees the object.
        extra_context = {**(extra_context or {}), **self._attempts_context(request, object_id)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _attempts_context(self, request: HttpRequest, object_id: str) -> dict:
        valid_id = object_id.isascii() and object_id.isdigit() and int(object_id) <= INT64_MAX
        attempts = (
            DeliveryAttempt.objects.filter(run_id=object_id)
            if valid_id
            else DeliveryAttempt.objects.none()
        )
        scope = account_scope(request)
        if scope is not None:
            attempts = attempts.filter(conversion__account_id__in=scope)
        changelist = reverse(
            "admin:conversions_deliveryattempt_changelist", current_app=self.admin_site.name
        )
        return {
            "recent_attempts": list(
                attempts.select_related("postback").order_by("-id")[:RECENT_ATTEMPTS]
            ),
            "attempts_url": f"{changelist}?run__id__exact={object_id}",
        }


@admin.register(RetriggerChunk)
class RetriggerChunkAdmin(ScopedModelAdmin):
    """Internal work units of background runs: superusers only, for diagnosing a run."""

    superuser_only = True
    list_display = ("id", "run", "seq", "status", "worker", "heartbeat_at")
    list_select_related = ("run",)
    list_filter = ("status",)
    search_fields = ("=run__id",)
    show_full_result_count = False


@admin.register(RunItem)
class RunItemAdmin(ScopedModelAdmin):
    account_path = "conversion__account_id"
    list_display = ("id", "run", "conversion_id", "outcome", "created_at")
    list_select_related = ("run",)
    list_filter = ("outcome",)
    search_fields = ("=run__id", "=conversion__id")
    show_full_result_count = False
