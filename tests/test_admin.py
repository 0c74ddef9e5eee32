"""The admin: tenant scoping, the change list, read-only run/attempt pages, and the
"Re-trigger postbacks" action posted exactly as a browser posts it (Django's
tests/admin_views/test_actions.py style: the change list form, then the confirmation
page's own form, parsed from its HTML)."""

import itertools
import re
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversions.models import (
    Conversion,
    DeliveryAttempt,
    RetriggerChunk,
    RetriggerRun,
)
from tests import factories as f

CHANGELIST = reverse("admin:conversions_conversion_changelist")
ACTION = "retrigger_postbacks"


# --- helpers ------------------------------------------------------------------------------


class _FormParser(HTMLParser):
    """The fields a browser would submit from the page's POST forms."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form" and a.get("method", "").lower() == "post":
            self.forms.append({"action": a.get("action", ""), "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(a)


def confirmation_form(response) -> tuple[str, list[dict]]:
    parser = _FormParser()
    parser.feed(response.content.decode())
    forms = [form for form in parser.forms if any(i.get("name") == "post" for i in form["inputs"])]
    assert len(forms) == 1, "the confirmation page has exactly one confirm form"
    return forms[0]["action"], forms[0]["inputs"]


def submit_confirmation(client: Client, response, *, force: bool = False):
    """Post the confirmation page's form as a browser would: hidden inputs, the force
    checkbox only when ticked, and the Confirm button's name/value."""
    action, inputs = confirmation_form(response)
    data: dict[str, list[str]] = {}
    for field in inputs:
        name, kind = field.get("name"), field.get("type", "text")
        if not name or (kind == "checkbox" and not (force and name == "force")):
            continue
        data.setdefault(name, []).append(field.get("value", "on"))
    return client.post(action or response.wsgi_request.get_full_path(), data)


def post_action(client: Client, ids, *, url: str = CHANGELIST, select_across: bool = False):
    """The change list's action form: ticked rows, the action, the Go button's index."""
    return client.post(
        url,
        {
            "action": ACTION,
            ACTION_CHECKBOX_NAME: [str(pk) for pk in ids],
            "select_across": "1" if select_across else "0",
            "index": "0",
        },
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def result_ids(response) -> list[int]:
    return [obj.pk for obj in response.context["cl"].result_list]


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The factories hash a password per user; the real hasher costs a second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def fast_retries(settings):
    settings.POSTBACK_RETRY_BASE = 0.01
    settings.POSTBACK_RETRY_CAP = 0.05
    settings.POSTBACK_MAX_ATTEMPTS = 1
    return settings


@pytest.fixture
def world(httpserver, allow_loopback, fast_retries):
    """Two tenants. `mine` is administered by `alice`; `theirs` belongs to someone else."""
    httpserver.expect_request("/pb").respond_with_data("ok")
    mine, theirs = f.make_account(name="Mine"), f.make_account(name="Theirs")
    aff = f.make_affiliate(mine, name="My affiliate")
    other_aff = f.make_affiliate(theirs, name="Secret rival affiliate")
    url = httpserver.url_for("/pb") + "?cid={click_id}"
    f.make_postback(aff, url)
    f.make_postback(other_aff, url)
    alice = f.make_account_admin(mine, username="alice")
    alice.is_staff = True
    alice.save()
    return {
        "mine": mine,
        "theirs": theirs,
        "aff": aff,
        "other_aff": other_aff,
        "alice": alice,
        "approved": f.make_conversion(aff),
        "rejected": f.make_conversion(aff, status=Conversion.Status.REJECTED),
        "foreign": f.make_conversion(other_aff),
    }


# --- registration and access --------------------------------------------------------------


def test_every_model_of_the_app_is_registered():
    models = list(apps.get_app_config("conversions").get_models())
    assert models
    assert [m.__name__ for m in models if not admin.site.is_registered(m)] == []


@pytest.mark.django_db
def test_account_admin_sees_only_their_accounts_conversions(world):
    client = login(world["alice"])

    response = client.get(CHANGELIST)

    assert response.status_code == 200
    assert sorted(result_ids(response)) == sorted([world["approved"].pk, world["rejected"].pk])
    # Filter choices do not leak the other tenant's names either.
    assert "Secret rival affiliate" not in response.content.decode()
    assert "My affiliate" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url_name",
    ["conversion_change", "affiliate_change", "account_change", "postback_change"],
)
def test_other_accounts_detail_pages_are_not_reachable(world, url_name):
    client = login(world["alice"])
    foreign = {
        "conversion_change": world["foreign"],
        "affiliate_change": world["other_aff"],
        "account_change": world["theirs"],
        "postback_change": world["other_aff"].postbacks.get(),
    }[url_name]

    response = client.get(reverse(f"admin:conversions_{url_name}", args=[foreign.pk]))

    # Django's answer for an object that does not exist: back to the index, with a note.
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")
    own = client.get(reverse(f"admin:conversions_{url_name}", args=[_own_twin(world, url_name)]))
    assert own.status_code == 200


def _own_twin(world, url_name: str) -> int:
    return {
        "conversion_change": world["approved"].pk,
        "affiliate_change": world["aff"].pk,
        "account_change": world["mine"].pk,
        "postback_change": world["aff"].postbacks.get().pk,
    }[url_name]


@pytest.mark.django_db
def test_member_cannot_see_or_trigger_the_action(world, httpserver):
    member = f.make_member(world["mine"], username="bob")
    member.is_staff = True
    member.save()
    client = login(member)

    index = client.get(reverse("admin:index"))
    listing = client.get(CHANGELIST)
    action = post_action(client, [world["approved"].pk])

    assert index.status_code == 200
    assert CHANGELIST not in index.content.decode()
    assert listing.status_code == 403
    assert action.status_code == 403
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
def test_django_model_permissions_alone_grant_nothing(world):
    # Membership is the single source of truth: a staff user with the model's view
    # permission but no admin membership still sees nothing.
    staff = f.make_user("carol", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_conversion"))

    response = login(staff).get(CHANGELIST)

    assert response.status_code == 403


@pytest.mark.django_db
def test_action_is_offered_to_account_admins_and_superusers(world):
    root = f.make_user("root", superuser=True)
    for user in (world["alice"], root):
        response = login(user).get(CHANGELIST)
        choices = [name for name, _ in response.context["action_form"].fields["action"].choices]
        assert ACTION in choices
        assert "delete_selected" not in choices


@pytest.mark.django_db
def test_account_admin_has_read_only_pages(world):
    client = login(world["alice"])

    add = client.get(reverse("admin:conversions_affiliate_add"))
    change = client.post(
        reverse("admin:conversions_affiliate_change", args=[world["aff"].pk]),
        {"name": "renamed", "account": world["mine"].pk, "is_active": "on"},
    )
    postback = f.make_postback(world["aff"], "https://partner.example/pb?token=abc123&c={click_id}")
    postback_page = client.get(reverse("admin:conversions_postback_change", args=[postback.pk]))

    assert add.status_code == 403
    assert change.status_code == 403
    world["aff"].refresh_from_db()
    assert world["aff"].name == "My affiliate"
    # The signing secret and credentials in the template are not shown to viewers.
    assert "secret" not in postback_page.context["adminform"].form.fields
    assert "abc123" not in postback_page.content.decode()
    assert "token=***" in postback_page.content.decode()


@pytest.mark.django_db
def test_internal_tables_are_superuser_only(world):
    client = login(world["alice"])

    for name in ("retriggerchunk", "deliveryclaim", "idempotencyrecord"):
        assert client.get(reverse(f"admin:conversions_{name}_changelist")).status_code == 403


# --- the action ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_confirmation_page_previews_a_dry_run_and_sends_nothing(world, httpserver):
    client = login(world["alice"])
    ids = [world["approved"].pk, world["rejected"].pk]

    response = post_action(client, ids)

    assert response.status_code == 200
    assert response.templates[0].name.endswith("retrigger_confirmation.html")
    text = response.content.decode()
    assert "2 conversions are selected" in text
    rows = {
        row.label: (row.without_force, row.with_force) for row in response.context["preview"].rows
    }
    assert rows["Conversions that would fire"] == (1, 2)
    assert rows["Conversions skipped"] == (1, 0)
    assert rows["Postbacks skipped: rejected"] == (1, 0)
    _, inputs = confirmation_form(response)
    names = [i.get("name") for i in inputs]
    assert "csrfmiddlewaretoken" in names and "force" in names
    assert sorted(i["value"] for i in inputs if i.get("name") == ACTION_CHECKBOX_NAME) == sorted(
        map(str, ids)
    )
    assert 'value="Confirm"' in text and "Cancel" in text
    assert httpserver.log == []
    assert not RetriggerRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_confirm_fires_and_reports_the_counts_with_a_link_to_the_run(world, httpserver):
    client = login(world["alice"])
    page = post_action(client, [world["approved"].pk, world["rejected"].pk])

    response = submit_confirmation(client, page)

    assert response.status_code == 302
    assert response["Location"] == CHANGELIST
    run = RetriggerRun.objects.get()
    assert run.source == RetriggerRun.Source.ADMIN and run.created_by == world["alice"]
    assert not run.force
    assert (run.selected, run.delivered, run.skipped) == (2, 1, 1)
    followed = client.get(response["Location"])
    [message] = messages_of(followed)
    assert "2 conversions: 1 delivered, 0 failed, 1 skipped (rejected: 1)" in message
    run_url = reverse("admin:conversions_retriggerrun_change", args=[run.pk])
    assert f'<a href="{run_url}">run #{run.pk}</a>' in message
    assert [req.args["cid"] for req, _ in httpserver.log] == [str(world["approved"].click_id)]


@pytest.mark.django_db(transaction=True)
def test_confirm_with_force_fires_rejected_too(world, httpserver):
    client = login(world["alice"])
    page = post_action(client, [world["approved"].pk, world["rejected"].pk])

    submit_confirmation(client, page, force=True)

    run = RetriggerRun.objects.get()
    assert run.force
    assert (run.delivered, run.skipped) == (2, 0)
    assert len(httpserver.log) == 2


@pytest.mark.django_db
def test_confirm_without_csrf_token_is_refused(world, httpserver):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["alice"])
    data = {
        "action": ACTION,
        ACTION_CHECKBOX_NAME: [str(world["approved"].pk)],
        "select_across": "0",
        "post": "yes",
    }

    response = client.post(CHANGELIST, data)

    assert response.status_code == 403
    assert not RetriggerRun.objects.exists()


@pytest.mark.django_db
def test_other_accounts_ids_cannot_be_selected(world, httpserver):
    client = login(world["alice"])

    response = post_action(client, [world["foreign"].pk], url=CHANGELIST)

    assert response.status_code == 302
    followed = client.get(response["Location"])
    assert "No conversions selected." in messages_of(followed)
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
def test_cancel_returns_to_the_filtered_change_list(world):
    client = login(world["alice"])
    url = f"{CHANGELIST}?status__exact=approved"

    response = post_action(client, [world["approved"].pk], url=url)

    cancel = re.search(r'<a href="([^"]+)" class="button cancel-link">', response.content.decode())
    assert cancel is not None
    assert cancel.group(1).replace("&amp;", "&") == url


_bulk_ids = itertools.count(10_000_000)


def _bulk_conversions(affiliate, count: int, **kw) -> list[Conversion]:
    conversion_type = f.make_conversion_type()
    rows = [
        Conversion(
            id=(pk := next(_bulk_ids)),
            account=affiliate.account,
            affiliate=affiliate,
            conversion_type=conversion_type,
            click_id=uuid.uuid4(),
            transaction_id=f"bulk-{pk}",
            converted_at=datetime(2026, 2, 1, tzinfo=UTC),
            **kw,
        )
        for _ in range(count)
    ]
    return Conversion.objects.bulk_create(rows)


@pytest.mark.django_db
def test_select_all_across_a_filtered_list_carries_the_filter_not_the_rows(world, settings):
    # given: more rows than one page, a filter, and a preview cap below the selection
    settings.RETRIGGER_SYNC_MAX = 10
    settings.RETRIGGER_ADMIN_PREVIEW_MAX = 50
    _bulk_conversions(world["aff"], 150)
    _bulk_conversions(world["aff"], 20, status=Conversion.Status.PENDING)
    _bulk_conversions(world["other_aff"], 30)  # another tenant's: never selected
    client = login(world["alice"])
    url = f"{CHANGELIST}?status__exact=approved"
    page_ids = result_ids(client.get(url))
    assert len(page_ids) == 100  # one page of the 151 approved of alice's

    # when: "Select all 151" posts the page's ticked rows plus select_across=1
    with CaptureQueriesContext(connection) as queries:
        response = post_action(client, page_ids, url=url, select_across=True)

    # then: the count is the filtered queryset's, and the form carries the filter
    assert response.status_code == 200
    assert "151 conversions are selected" in response.content.decode()
    action, inputs = confirmation_form(response)
    assert urlsplit(action.replace("&amp;", "&")).query == "status__exact=approved"
    selected = [i for i in inputs if i.get("name") == ACTION_CHECKBOX_NAME]
    assert len(selected) == 1
    assert [i["value"] for i in inputs if i.get("name") == "select_across"] == ["1"]
    preview = response.context["preview"]
    assert (preview.sampled, preview.size) == (True, 50)
    _assert_no_unbounded_row_reads(queries)

    # when: confirmed (past RETRIGGER_SYNC_MAX: the run goes to the background)
    done = submit_confirmation(client, response)

    # then
    assert done.status_code == 302 and done["Location"] == url
    run = RetriggerRun.objects.get()
    assert run.selected == 151 and run.status == RetriggerRun.Status.QUEUED
    chunk_ids = {pk for ids in run.chunks.values_list("conversion_ids", flat=True) for pk in ids}
    expected = set(
        Conversion.objects.filter(account=world["mine"], status="approved").values_list(
            "pk", flat=True
        )
    )
    assert chunk_ids == expected
    assert run.criteria["selectAcross"] is True
    assert run.criteria["adminFilters"] == {"status__exact": ["approved"]}
    [message] = messages_of(client.get(done["Location"]))
    assert "151 conversions to re-trigger: running in the background" in message
    assert reverse("admin:conversions_retriggerrun_change", args=[run.pk]) in message


def _assert_no_unbounded_row_reads(queries: CaptureQueriesContext) -> None:
    """Full conversion rows are only read a bounded batch at a time (LIMIT or an id list);
    the whole selection is only ever counted or streamed as ids."""
    for query in queries.captured_queries:
        sql = query["sql"]
        if 'FROM "conversions_conversion"' not in sql or not sql.lstrip().startswith("SELECT"):
            continue
        reads_rows = '"conversions_conversion"."click_id"' in sql
        bounded = "LIMIT" in sql or any(
            f'"conversions_conversion"."id" {op}' in sql for op in ("IN (", "= ANY(")
        )
        assert not reads_rows or bounded, sql


@pytest.mark.django_db
def test_select_all_is_limited_to_the_admins_accounts(world, settings):
    settings.RETRIGGER_SYNC_MAX = 0  # background: nothing fires in this test
    client = login(world["alice"])

    page = post_action(client, [world["approved"].pk], select_across=True)
    submit_confirmation(client, page)

    run = RetriggerRun.objects.get()
    ids = {pk for ids in run.chunks.values_list("conversion_ids", flat=True) for pk in ids}
    assert ids == {world["approved"].pk, world["rejected"].pk}
    assert list(run.accounts.values_list("pk", flat=True)) == [world["mine"].pk]


# --- the change list ----------------------------------------------------------------------


def _attempt(conversion, *, delivered: bool, final: bool = True, status_code=200, error=""):
    run = RetriggerRun.objects.create(actor="t", source="api", criteria={}, status="completed")
    postback = conversion.affiliate.postbacks.first()
    return DeliveryAttempt.objects.create(
        run=run,
        conversion=conversion,
        postback=postback,
        affiliate=conversion.affiliate,
        event_id=DeliveryAttempt.event_id_for(conversion.pk, postback.pk),
        attempt_number=1,
        method="GET",
        url="http://example.invalid/",
        status_code=status_code,
        error=error,
        delivered=delivered,
        final=final,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("delivered", "approved"), ("failed", "rejected"), ("never", "fresh")],
)
def test_last_outcome_filter(world, outcome, expected):
    fresh = f.make_conversion(world["aff"])
    _attempt(world["approved"], delivered=False, status_code=500)
    _attempt(world["approved"], delivered=True)  # the later attempt wins
    _attempt(world["rejected"], delivered=True)
    _attempt(world["rejected"], delivered=False, status_code=None, error="timeout")
    _attempt(fresh, delivered=False, final=False, status_code=503)  # not final: never
    wanted = {"approved": world["approved"], "rejected": world["rejected"], "fresh": fresh}

    response = login(world["alice"]).get(f"{CHANGELIST}?last_outcome={outcome}")

    assert result_ids(response) == [wanted[expected].pk]


@pytest.mark.django_db
def test_last_outcome_column_costs_no_query_per_row(world, django_assert_max_num_queries):
    client = login(world["alice"])
    _attempt(world["approved"], delivered=True)
    _attempt(world["rejected"], delivered=False, status_code=None, error="timeout")
    with CaptureQueriesContext(connection) as few:
        page = client.get(CHANGELIST)
    assert "delivered 200" in page.content.decode()
    assert "failed timeout" in page.content.decode()

    for conversion in _bulk_conversions(world["aff"], 30):
        _attempt(conversion, delivered=True)
    with CaptureQueriesContext(connection) as many:
        page = client.get(CHANGELIST)

    assert len(result_ids(page)) == 32
    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["id", "click_id", "transaction_id"])
def test_search_by_id_click_id_and_transaction_id(world, field):
    target = world["rejected"]

    response = login(world["alice"]).get(CHANGELIST, {"q": str(getattr(target, field))})

    assert result_ids(response) == [target.pk]


@pytest.mark.django_db
@pytest.mark.parametrize("term", ["not-a-number", "99999999999999999999999", str(uuid.uuid4())])
def test_search_with_unmatched_terms_finds_nothing_without_error(world, term):
    response = login(world["alice"]).get(CHANGELIST, {"q": term})

    assert response.status_code == 200
    assert result_ids(response) == []


@pytest.mark.django_db
def test_search_never_reaches_another_tenant(world):
    response = login(world["alice"]).get(CHANGELIST, {"q": str(world["foreign"].pk)})

    assert result_ids(response) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "status__exact=rejected",
        "converted_at__year=2026&converted_at__month=1",
        "affiliate__id__exact={aff}",
        "account__id__exact={mine}",
        "conversion_type__id__exact={ctype}",
    ],
)
def test_filters_and_date_hierarchy(world, query):
    ctype = world["rejected"].conversion_type_id
    url = f"{CHANGELIST}?" + query.format(aff=world["aff"].pk, mine=world["mine"].pk, ctype=ctype)

    response = login(world["alice"]).get(url)

    assert response.status_code == 200
    expected = {"status__exact=rejected": [world["rejected"].pk]}.get(
        query, sorted([world["approved"].pk, world["rejected"].pk])
    )
    assert sorted(result_ids(response)) == sorted(expected)


# --- a selection is never wider than asked ------------------------------------------------


def _confirm_directly(client: Client, ids, *, url: str = CHANGELIST, select_across: bool = False):
    """A crafted Confirm POST: the confirmation page's fields, without visiting the page."""
    return client.post(
        url,
        {
            "action": ACTION,
            ACTION_CHECKBOX_NAME: [str(pk) for pk in ids],
            "select_across": "1" if select_across else "0",
            "post": "yes",
            "force": "1",
        },
    )


@pytest.fixture
def their_refs(world):
    """Another tenant's brand and traffic source; alice's only reference rows are her own."""
    return {
        "mine": world["mine"].pk,
        "theirs": world["theirs"].pk,
        "aff": world["aff"].pk,
        "other_aff": world["other_aff"].pk,
        "their_brand": f.make_brand(world["theirs"], name="Their brand").pk,
        "their_source": f.make_traffic_source(world["theirs"], name="Their source").pk,
        "missing_type": 987_654_321,
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "account__id__exact={theirs}",
        "account__id__exact={theirs}&affiliate__id__exact={aff}",
        "account__isnull=True",
        "affiliate__id__exact={other_aff}",
        "brand__id__exact={their_brand}",
        "traffic_source__id__exact={their_source}",
        "conversion_type__id__exact={missing_type}",
    ],
)
def test_a_filter_with_a_single_choice_still_applies(world, their_refs, httpserver, query):
    # Django drops a related filter whose sidebar has one choice (alice has one account,
    # one affiliate, one conversion type), after taking its parameter: the list, and
    # "select all" with it, then covered every row of hers.
    url = f"{CHANGELIST}?" + query.format(**their_refs)
    client = login(world["alice"])

    listing = client.get(url)
    assert listing.status_code == 200
    assert result_ids(listing) == []
    for send in (post_action, _confirm_directly):
        response = send(client, [world["approved"].pk], url=url, select_across=True)
        assert response.status_code == 302
        assert messages_of(client.get(response["Location"])) == ["No conversions selected."]
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
def test_own_single_choice_filters_still_select_their_rows(world, their_refs):
    url = (
        f"{CHANGELIST}?account__id__exact={world['mine'].pk}&affiliate__id__exact={world['aff'].pk}"
    )

    response = login(world["alice"]).get(url)

    assert sorted(result_ids(response)) == sorted([world["approved"].pk, world["rejected"].pk])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "account__id__exact=abc",
        "affiliate__id__exact=abc",
        "brand__id__exact=abc",
        "traffic_source__id__exact=abc",
        "conversion_type__id__exact=abc",
        "last_outcome=bogus",
        "last_outcome=",
        "converted_at__year=abc",
        "converted_at__year=9999",
        "converted_at__year=9999&converted_at__month=12",
        "converted_at__year=2026&converted_at__month=13",
    ],
)
def test_an_invalid_filter_value_is_refused_not_dropped(world, httpserver, query):
    url = f"{CHANGELIST}?{query}"
    client = login(world["alice"])

    listing = client.get(url)
    action = post_action(client, [world["approved"].pk], url=url, select_across=True)
    confirm = _confirm_directly(client, [world["approved"].pk], url=url, select_across=True)

    # Django's answer to an invalid lookup: back to the bare list with ?e=1.
    for response in (listing, action, confirm):
        assert response.status_code == 302
        assert response["Location"] == f"{CHANGELIST}?e=1"
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
def test_superuser_gets_the_same_answers(world, their_refs):
    client = login(f.make_user("root", superuser=True))

    unknown = client.get(f"{CHANGELIST}?last_outcome=bogus")
    foreign = client.get(f"{CHANGELIST}?account__id__exact={world['theirs'].pk}")

    assert unknown.status_code == 302 and unknown["Location"] == f"{CHANGELIST}?e=1"
    assert result_ids(foreign) == [world["foreign"].pk]


@pytest.mark.django_db
def test_a_search_django_cannot_read_is_refused_not_dropped(world, httpserver):
    # Django's search form rejects a NUL character, reports it and searches nothing: the
    # list, and "select all" with it, then covered every row.
    url = f"{CHANGELIST}?q=%00"
    client = login(world["alice"])

    listing = client.get(url)
    action = post_action(client, [world["approved"].pk], url=url, select_across=True)

    for response in (listing, action):
        assert response.status_code == 302
        assert response["Location"] == f"{CHANGELIST}?e=1"
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query", ["transaction_id=%00", "id__in=99999999999999999999999", "id__in=1,%00"]
)
def test_raw_lookups_the_database_cannot_take_are_refused_without_error(world, query):
    url = f"{CHANGELIST}?{query}"
    client = login(world["alice"])

    listing = client.get(url)
    action = post_action(client, [world["approved"].pk], url=url, select_across=True)

    if listing.status_code == 200:  # PostgreSQL compares a too big id as a numeric
        assert connection.vendor == "postgresql" and result_ids(listing) == []
        assert messages_of(client.get(action["Location"])) == ["No conversions selected."]
    else:
        for response in (listing, action):
            assert response.status_code == 302
            assert response["Location"] == f"{CHANGELIST}?e=1"
    assert not RetriggerRun.objects.exists()


@pytest.mark.django_db
def test_a_run_page_with_an_id_past_64_bits_is_not_found(world):
    url = reverse("admin:conversions_retriggerrun_change", args=["99999999999999999999999"])

    response = login(world["alice"]).get(url)

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad",
    ["abc", "", "1.5", "99999999999999999999999", "9223372036854775808"],
)
@pytest.mark.parametrize("send", [post_action, _confirm_directly], ids=["action", "confirm"])
def test_malformed_selected_ids_are_refused_without_error(world, httpserver, bad, send):
    client = login(world["alice"])

    response = send(client, [world["approved"].pk, bad])

    assert response.status_code == 302
    assert response["Location"] == CHANGELIST
    assert messages_of(client.get(CHANGELIST)) == [
        "The selection holds an invalid id; nothing was done."
    ]
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db
def test_malformed_ids_are_refused_by_the_runs_cancel_action_too(world):
    queued = RetriggerRun.objects.create(
        created_by=world["alice"], actor="alice", source="admin", criteria={}
    )
    url = reverse("admin:conversions_retriggerrun_changelist")
    client = login(world["alice"])

    response = client.post(
        url, {"action": "cancel_runs", ACTION_CHECKBOX_NAME: [str(queued.pk), "abc"], "index": "0"}
    )

    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.status == RetriggerRun.Status.QUEUED


@pytest.mark.django_db
def test_a_confirm_with_nothing_in_scope_creates_no_run(world, httpserver):
    client = login(world["alice"])

    response = _confirm_directly(client, [world["foreign"].pk])

    assert response.status_code == 302
    assert response["Location"] == CHANGELIST
    assert messages_of(client.get(CHANGELIST)) == ["No conversions selected."]
    assert not RetriggerRun.objects.exists()
    assert httpserver.log == []


@pytest.mark.django_db(transaction=True)
def test_a_run_that_fires_nothing_says_so(world, httpserver):
    client = login(world["alice"])
    page = post_action(client, [world["rejected"].pk])

    response = submit_confirmation(client, page)

    run = RetriggerRun.objects.get()
    assert (run.selected, run.delivered, run.failed, run.skipped) == (1, 0, 0, 1)
    [message] = messages_of(client.get(response["Location"]))
    run_url = reverse("admin:conversions_retriggerrun_change", args=[run.pk])
    assert message == (
        "Nothing was fired for 1 conversion: 1 skipped (rejected: 1). "
        f'<a href="{run_url}">run #{run.pk}</a>.'
    )
    assert httpserver.log == []


# --- runs and attempts --------------------------------------------------------------------


@pytest.mark.django_db
def test_run_page_is_read_only_and_refreshes_while_running(world):
    run = RetriggerRun.objects.create(
        created_by=world["alice"],
        actor="alice",
        source="admin",
        criteria={"selectAcross": True},
        status=RetriggerRun.Status.RUNNING,
        selected=200,
        processed=50,
    )
    client = login(world["alice"])
    url = reverse("admin:conversions_retriggerrun_change", args=[run.pk])

    running = client.get(url)
    post = client.post(url, {"status": "completed"})
    RetriggerRun.objects.filter(pk=run.pk).update(status="completed", processed=200)
    done = client.get(url)

    assert running.status_code == 200
    text = running.content.decode()
    assert '<progress value="50" max="200"' in text and "(25%)" in text
    assert '<meta http-equiv="refresh"' in text
    assert 'name="_save"' not in text
    assert post.status_code == 403
    assert '<meta http-equiv="refresh"' not in done.content.decode()


@pytest.mark.django_db
def test_runs_of_other_tenants_are_not_visible(world):
    root = f.make_user("root", superuser=True)
    foreign = RetriggerRun.objects.create(created_by=root, actor="root", source="api", criteria={})
    foreign.accounts.set([world["theirs"]])
    shared = RetriggerRun.objects.create(created_by=root, actor="root", source="api", criteria={})
    shared.accounts.set([world["mine"]])
    client = login(world["alice"])

    listing = client.get(reverse("admin:conversions_retriggerrun_changelist"))
    detail = client.get(reverse("admin:conversions_retriggerrun_change", args=[foreign.pk]))

    assert result_ids(listing) == [shared.pk]
    assert detail.status_code == 302


@pytest.mark.django_db
def test_run_page_lists_its_attempts(world):
    attempt = _attempt(world["approved"], delivered=True)
    RetriggerRun.objects.filter(pk=attempt.run_id).update(created_by=world["alice"])
    client = login(world["alice"])

    page = client.get(reverse("admin:conversions_retriggerrun_change", args=[attempt.run_id]))
    listing = client.get(page.context["attempts_url"])

    assert [a.pk for a in page.context["recent_attempts"]] == [attempt.pk]
    assert result_ids(listing) == [attempt.pk]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("outcome=delivered", ["ok"]),
        ("outcome=failed", ["timeout", "bad"]),
        ("outcome=retried", ["retry"]),
        ("status_code=5xx", ["retry"]),
        ("status_code=404", ["bad"]),
        ("status_code=none", ["timeout"]),
        ("affiliate__id__exact={aff}", ["ok", "timeout", "bad", "retry"]),
    ],
)
def test_attempt_filters(world, query, expected):
    made = {
        "ok": _attempt(world["approved"], delivered=True),
        "timeout": _attempt(world["approved"], delivered=False, status_code=None, error="timeout"),
        "bad": _attempt(world["rejected"], delivered=False, status_code=404, error="http_status"),
        "retry": _attempt(world["rejected"], delivered=False, final=False, status_code=503),
    }
    _attempt(world["foreign"], delivered=True)  # another tenant's: never listed
    url = reverse("admin:conversions_deliveryattempt_changelist")

    response = login(world["alice"]).get(f"{url}?" + query.format(aff=world["aff"].pk))

    assert sorted(result_ids(response)) == sorted(made[name].pk for name in expected)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("outcome=bogus", "invalid"),
        ("outcome=", "invalid"),
        ("status_code=", []),
        ("status_code=bogus", []),
        ("affiliate__id__exact={other_aff}", []),
    ],
)
def test_attempt_filters_never_widen(world, query, expected):
    _attempt(world["approved"], delivered=True)
    url = reverse("admin:conversions_deliveryattempt_changelist")

    response = login(world["alice"]).get(f"{url}?" + query.format(other_aff=world["other_aff"].pk))

    if expected == "invalid":
        assert response.status_code == 302 and response["Location"] == f"{url}?e=1"
    else:
        assert response.status_code == 200 and result_ids(response) == expected


@pytest.mark.django_db
def test_superuser_sees_every_tenant_and_internal_tables(world):
    RetriggerChunk.objects.create(
        run=RetriggerRun.objects.create(actor="t", source="api", criteria={}),
        seq=0,
        conversion_ids=[1],
    )
    client = login(f.make_user("root", superuser=True))

    listing = client.get(CHANGELIST)
    chunks = client.get(reverse("admin:conversions_retriggerchunk_changelist"))

    assert len(result_ids(listing)) == 3
    assert chunks.status_code == 200 and len(result_ids(chunks)) == 1


@pytest.mark.django_db
def test_cancel_action_stops_a_queued_run(world):
    queued = RetriggerRun.objects.create(
        created_by=world["alice"], actor="alice", source="admin", criteria={}
    )
    finished = RetriggerRun.objects.create(
        created_by=world["alice"], actor="alice", source="admin", criteria={}, status="completed"
    )
    client = login(world["alice"])

    response = client.post(
        reverse("admin:conversions_retriggerrun_changelist"),
        {
            "action": "cancel_runs",
            ACTION_CHECKBOX_NAME: [str(queued.pk), str(finished.pk)],
            "index": "0",
        },
    )

    assert response.status_code == 302
    queued.refresh_from_db()
    finished.refresh_from_db()
    assert queued.status == RetriggerRun.Status.CANCELLED
    assert finished.status == RetriggerRun.Status.COMPLETED
    assert "Cancellation requested for 1 run(s)." in messages_of(client.get(response["Location"]))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_an_unclear_force_value_fires_nothing(client, value):
    # given a delivered conversion an account admin would only re-fire with force
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, "http://127.0.0.1:9/pb")
    conversion = f.make_conversion(affiliate)
    admin = f.make_account_admin(account)
    admin.is_staff = True
    admin.save()
    client.force_login(admin)

    # when the Confirm POST carries a force value that is neither yes nor no
    response = client.post(
        "/admin/conversions/conversion/",
        {
            "action": "retrigger_postbacks",
            "_selected_action": [str(conversion.pk)],
            "post": "yes",
            "force": value,
        },
    )

    # then nothing ran
    assert response.status_code == 302
    assert not RetriggerRun.objects.exists()


@pytest.mark.django_db
def test_postback_search_does_not_reach_into_masked_urls(client):
    # given a postback whose URL holds a token an account admin sees masked
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, "http://tracker.example/pb?token=abcTOKSECRET&c={click_id}")
    admin = f.make_account_admin(account)
    admin.is_staff = True
    admin.save()
    client.force_login(admin)

    # when they search for the secret
    response = client.get("/admin/conversions/postback/", {"q": "abcTOKSECRET"})

    # then the search cannot confirm it
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
