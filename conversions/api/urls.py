"""Routes under `api/`. Both slash forms of each path are accepted; only the
slash-less one (the contract's spelling) is named and documented."""

from django.urls import path, re_path

from conversions.api.views import (
    RetriggerRunCancelView,
    RetriggerRunView,
    RetriggerView,
    UnknownPathView,
)


def _both(route: str, view, name: str) -> list:
    return [
        path(route, view.as_view(), name=name),
        path(f"{route}/", view.as_view(schema=None)),
    ]


urlpatterns = [
    *_both("conversions/retrigger", RetriggerView, "conversions-retrigger"),
    *_both("conversions/retrigger-runs/<int:run_id>", RetriggerRunView, "retrigger-run"),
    *_both(
        "conversions/retrigger-runs/<int:run_id>/cancel",
        RetriggerRunCancelView,
        "retrigger-run-cancel",
    ),
    # Last: anything else under conversions/ is a JSON 404 (api/schema/ stays reachable).
    re_path(r"^conversions/", UnknownPathView.as_view(schema=None)),
]
