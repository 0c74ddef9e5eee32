"""One real browser through the admin: log in, select, re-trigger with force, see the message.

Headless Chromium from the distribution's `chromium` package, driven by Playwright's
Python API with `executable_path` (Playwright never downloads a browser here). Without
Chromium or Playwright the test skips locally but fails in CI (`CI=true`), so a broken CI
image cannot pass by silently skipping.
"""

import os
import shutil
from pathlib import Path

import pytest
from django.db import connections

from conversions.models import Conversion, RetriggerRun
from tests import factories as f

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "pw-12345678"  # what tests.factories gives every user


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def _chromium_path() -> str:
    """`CHROMIUM_PATH` if set (and then only that), else Debian's path or `chromium`."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        candidates = [configured]
    else:
        candidates = ["/usr/bin/chromium", shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    _unavailable(f"no Chromium at {candidates[0]} (install the distribution's package)")
    raise AssertionError("unreachable")


@pytest.fixture
def browser_page(monkeypatch):
    executable = _chromium_path()
    # Playwright's sync API keeps an event loop running in this thread; the test's own
    # ORM calls are still plain blocking calls, which Django would otherwise refuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            # While Playwright's loop runs, Django keeps this test's connections apart
            # from the usual ones; close them here or the test database cannot be dropped.
            connections.close_all()
            browser.close()


@pytest.fixture
def receiver(httpserver, allow_loopback, settings):
    settings.POSTBACK_MAX_ATTEMPTS = 1
    httpserver.expect_request("/pb").respond_with_data("ok")
    return httpserver


def test_account_admin_retriggers_with_force_in_a_real_browser(live_server, browser_page, receiver):
    # given: an account admin with one delivered-before conversion and one rejected one
    account = f.make_account(name="Browser account")
    affiliate = f.make_affiliate(account, name="Browser affiliate")
    f.make_postback(affiliate, receiver.url_for("/pb") + "?cid={click_id}")
    rejected = f.make_conversion(affiliate, status=Conversion.Status.REJECTED)
    approved = f.make_conversion(affiliate)
    user = f.make_account_admin(account, username="browser-admin")
    user.is_staff = True
    user.save()
    page = browser_page

    # when: log in, tick both rows, choose the action, press Go
    page.goto(f"{live_server.url}/admin/login/?next=/admin/conversions/conversion/")
    page.fill("#id_username", "browser-admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    for conversion in (rejected, approved):
        page.check(f"input.action-select[value='{conversion.pk}']")
    page.select_option("select[name=action]", "retrigger_postbacks")
    page.click("button[name=index]")

    # then: the confirmation page previews the dry run
    page.wait_for_selector("#retrigger-preview")
    assert "2 conversions are selected" in page.inner_text("#retrigger-count")

    # when: tick force and confirm
    page.check("#id_force")
    page.click("input[type=submit][value=Confirm]")

    # then: back on the change list with the counts and a link to the run
    message = page.wait_for_selector("ul.messagelist li")
    text = message.inner_text()
    assert "2 conversions: 2 delivered, 0 failed, 0 skipped" in text
    run = RetriggerRun.objects.get()
    assert run.force and run.created_by == user
    assert page.url.endswith("/admin/conversions/conversion/")
    page.click(f"ul.messagelist a:text('run #{run.pk}')")
    page.wait_for_selector("progress")
    assert f"/admin/conversions/retriggerrun/{run.pk}/change/" in page.url
    assert len(receiver.log) == 2
