"""The "Re-trigger postbacks" admin action: confirm with a dry-run preview, then run.

Follows Django's `delete_selected`: the first POST (from the change list) renders a
confirmation page; the page posts back to the same change list URL, so the filters in
its query string rebuild the same queryset, with `post=yes`. Every rule lives in the
service; this module gathers input, calls it and reports.

"Select all N" never becomes a list of ids: the confirmation page carries
`select_across=1` and a single id (Django's change list refuses a confirmation POST
without any `_selected_action`; with `select_across` that id is ignored), and the
queryset goes to the service as a queryset, which streams it in chunks.
"""

from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from conversions.access import AccountForbidden, actor_for_user
from conversions.models import RetriggerRun, SkipReason
from conversions.results import RetriggerResult, RunCounts, ordered_reasons

ACTION_NAME = "retrigger_postbacks"
TEMPLATE = "admin/conversions/conversion/retrigger_confirmation.html"
DEFAULT_PREVIEW_MAX = 1000


@dataclass(frozen=True)
class PreviewRow:
    label: str
    without_force: int
    with_force: int


@dataclass(frozen=True)
class Preview:
    size: int
    sampled: bool
    rows: list[PreviewRow]


def _flag(request: HttpRequest, name: str) -> bool:
    # The same parsing as the action form's own `select_across` field.
    return bool(forms.BooleanField(required=False).to_python(request.POST.get(name)))


_FORCE_VALUES = {
    None: False,
    "": False,
    "0": False,
    "false": False,
    "off": False,
    "1": True,
    "true": True,
    "on": True,
}


def retrigger_postbacks(modeladmin, request: HttpRequest, queryset: QuerySet):
    """Entry point, bound as the ModelAdmin's action."""
    select_across = _flag(request, "select_across")
    raw_force = request.POST.get("force")
    force = _FORCE_VALUES.get(raw_force.lower() if raw_force is not None else None)
    if force is None:
        # Skip rules are only bypassed on an unambiguous yes.
        modeladmin.message_user(
            request, "Invalid value for force; nothing was done.", messages.ERROR
        )
        return None
    if request.POST.get("post") == "yes":
        # A Confirm POST is checked as the first one is: ids outside the admin's scope
        # are gone from the queryset, and nothing left means no run at all.
        if not queryset.exists():
            return _nothing_selected(modeladmin, request)
        info = admin_info(request, queryset, select_across=select_across)
        _run(modeladmin, request, queryset, force=force, info=info)
        return None  # Django redirects back to the change list, filters kept.
    count = queryset.count()
    if count == 0:
        return _nothing_selected(modeladmin, request)
    return _confirmation_page(
        modeladmin, request, queryset, count=count, select_across=select_across, force=force
    )


def _nothing_selected(modeladmin, request: HttpRequest) -> None:
    modeladmin.message_user(request, "No conversions selected.", messages.WARNING)


def _service():
    # Imported when used: the service module pulls in the delivery engine.
    from conversions import services

    return services


def admin_info(request: HttpRequest, queryset: QuerySet, *, select_across: bool) -> dict:
    """The run's recorded criteria: the change list filters, or the ticked ids.

    Without select_across the ids are those ticked on one page (bounded by
    DATA_UPLOAD_MAX_NUMBER_FIELDS), so storing them is cheap.
    """
    filters = {key: request.GET.getlist(key) for key in request.GET if key not in ("p", "o")}
    ids = None if select_across else list(queryset.values_list("pk", flat=True))
    return {"adminFilters": filters, "selectAcross": select_across, "id": ids}


def _retrigger(
    request: HttpRequest,
    queryset: QuerySet,
    *,
    force: bool,
    dry_run: bool,
    info: dict | None = None,
):
    return _service().conversions_retrigger_queryset(
        queryset=queryset,
        actor=actor_for_user(request.user),
        force=force,
        dry_run=dry_run,
        source=RetriggerRun.Source.ADMIN,
        info=info,
    )


def _run(modeladmin, request: HttpRequest, queryset: QuerySet, *, force: bool, info: dict):
    try:
        result = _retrigger(request, queryset, force=force, dry_run=False, info=info)
    except AccountForbidden as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return
    run_url = None
    if result.run is not None:
        run_url = reverse(
            "admin:conversions_retriggerrun_change",
            args=[result.run.pk],
            current_app=modeladmin.admin_site.name,
        )
    level = messages.WARNING if result.counts.failed else messages.SUCCESS
    if result.queued:
        level = messages.INFO
    modeladmin.message_user(request, summary_message(result, run_url), level)


def summary_message(result: RetriggerResult, run_url: str | None) -> SafeString:
    counts = result.counts
    run_link = _run_link(result.run, run_url)
    if result.queued:
        return format_html(
            "{} {} to re-trigger: running in the background. Follow {}.",
            counts.selected,
            ngettext("conversion", "conversions", counts.selected),
            run_link,
        )
    if not (counts.delivered or counts.failed):
        # Every conversion was skipped: say so rather than "re-triggered".
        return format_html(
            "Nothing was fired for {} {}: {} skipped{}. {}.",
            counts.selected,
            ngettext("conversion", "conversions", counts.selected),
            counts.skipped,
            _reasons_text(counts.skipped_by_reason),
            run_link,
        )
    return format_html(
        "Re-triggered postbacks of {} {}: {} delivered, {} failed, {} skipped{}. {}.",
        counts.selected,
        ngettext("conversion", "conversions", counts.selected),
        counts.delivered,
        counts.failed,
        counts.skipped,
        _reasons_text(counts.skipped_by_reason),
        run_link,
    )


def _run_link(run: RetriggerRun | None, url: str | None) -> SafeString:
    if run is None or url is None:
        return format_html("{}", "the run")
    return format_html('<a href="{}">run #{}</a>', url, run.pk)


def _reasons_text(by_reason: dict[str, int]) -> str:
    reasons = ordered_reasons(by_reason)
    if not reasons:
        return ""
    return " (" + ", ".join(f"{_reason_label(r)}: {n}" for r, n in reasons.items()) + ")"


def _reason_label(reason: str) -> str:
    return reason.replace("_", " ")


def _preview_queryset(queryset: QuerySet, count: int) -> tuple[QuerySet, int, bool]:
    """The dry run covers at most RETRIGGER_ADMIN_PREVIEW_MAX conversions.

    A preview of a huge "select all" would otherwise do the whole run's reading work
    twice before the user has even confirmed. The sample is the first rows in list order
    (only their ids are read: bounded by the cap).
    """
    cap = getattr(settings, "RETRIGGER_ADMIN_PREVIEW_MAX", DEFAULT_PREVIEW_MAX)
    if count <= cap:
        return queryset, count, False
    ids = list(queryset.values_list("pk", flat=True)[:cap])
    return queryset.model._default_manager.filter(pk__in=ids), len(ids), True


def _preview(request: HttpRequest, queryset: QuerySet, count: int) -> Preview:
    sample, size, sampled = _preview_queryset(queryset, count)
    plain = _retrigger(request, sample, force=False, dry_run=True).counts
    forced = _retrigger(request, sample, force=True, dry_run=True).counts
    return Preview(size=size, sampled=sampled, rows=_preview_rows(plain, forced))


def _preview_rows(plain: RunCounts, forced: RunCounts) -> list[PreviewRow]:
    rows = [
        PreviewRow("Conversions that would fire", plain.retriggered, forced.retriggered),
        PreviewRow("Conversions skipped", plain.skipped, forced.skipped),
    ]
    for reason in SkipReason:
        without = plain.skipped_by_reason.get(reason.value, 0)
        with_ = forced.skipped_by_reason.get(reason.value, 0)
        if without or with_:
            label = f"Postbacks skipped: {_reason_label(reason.value)}"
            rows.append(PreviewRow(label, without, with_))
    return rows


def _confirmation_page(
    modeladmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    count: int,
    select_across: bool,
    force: bool,
) -> TemplateResponse:
    opts = modeladmin.model._meta
    if select_across:
        # One id only, for Django's "something is selected" check; see module doc.
        carried = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)[:1]
    else:
        # Without select_across the ids are those ticked on one page, already bounded
        # by DATA_UPLOAD_MAX_NUMBER_FIELDS; only the ones in scope are carried on.
        carried = [str(pk) for pk in queryset.values_list("pk", flat=True)]
    sync_max = settings.RETRIGGER_SYNC_MAX
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Re-trigger postbacks",
        "subtitle": None,
        "opts": opts,
        "count": count,
        "objects_name": model_ngettext(opts, count),
        "select_across": select_across,
        "selected_ids": carried,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "action_name": ACTION_NAME,
        "force": force,
        "preview": _preview(request, queryset, count),
        "sync_max": sync_max,
        "runs_in_background": count > sync_max,
        # The change list URL with its filters: Confirm posts there, Cancel returns there.
        "changelist_url": request.get_full_path(),
        "media": modeladmin.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, TEMPLATE, context)
