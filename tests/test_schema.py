"""The OpenAPI schema says exactly what the API accepts and answers.

Schema-driven fuzzing (`scripts/schemathesis.sh`) trusts the schema: a body it calls valid
must not be refused, and every answer must fit the documented status and shape. These
tests pin the schema to `conversions.criteria` and check real answers of every status
against it, so a drift shows up here before the fuzzer has to find it.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.exceptions import ValidationError

from conversions.api import idempotency
from conversions.criteria import (
    CRITERIA_KEYS,
    INT32_MAX,
    INT64_MAX,
    MAX_LIST_ITEMS,
    SORT_COLUMNS,
    parse_criteria,
)
from conversions.models import IdempotencyRecord, RetriggerRun
from tests import factories as f

URL = "/api/conversions/retrigger"
JSON = "application/json"


def openapi(client: Client) -> dict[str, Any]:
    response = client.get("/api/schema/", headers={"accept": "application/vnd.oai.openapi+json"})
    assert response.status_code == 200
    return json.loads(response.content)


def criteria_schema(schema: dict[str, Any]) -> dict[str, Any]:
    body = schema["paths"][URL]["post"]["requestBody"]["content"]
    assert len({json.dumps(v["schema"], sort_keys=True) for v in body.values()}) == 1
    return body[JSON]["schema"]


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable` as JSON Schema's `type: [..., "null"]`."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    return node


# --- the schema as a document ---------------------------------------------------------------


def test_the_schema_validates_without_warnings(tmp_path):
    # The same check CI runs; a warning (an unresolvable type, a clash) fails it.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s"))


@pytest.mark.django_db
def test_the_body_schema_lists_exactly_the_criteria_keys(client):
    # when
    body = criteria_schema(openapi(client))

    # then
    assert body["type"] == "object"
    assert body["additionalProperties"] is False
    assert set(body["properties"]) == set(CRITERIA_KEYS)
    assert "required" not in body
    assert all(prop.get("nullable") for prop in body["properties"].values())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "maximum"),
    [
        ("id", INT64_MAX),
        ("affiliateId", INT32_MAX),
        ("accountId", INT32_MAX),
        ("conversionTypes", INT32_MAX),
        ("brandIds", INT32_MAX),
        ("trafficSourceId", INT32_MAX),
    ],
)
def test_id_lists_state_the_ranges_the_api_enforces(client, key, maximum):
    # given
    prop = criteria_schema(openapi(client))["properties"][key]

    # then: the documented bounds are the enforced ones, both sides of each edge
    assert prop["type"] == "array"
    assert prop["maxItems"] == MAX_LIST_ITEMS
    assert (prop["items"]["minimum"], prop["items"]["maximum"]) == (1, maximum)
    parse_criteria({key: [1, maximum]})
    for bad in (0, maximum + 1):
        with pytest.raises(ValidationError):
            parse_criteria({key: [bad]})
    parse_criteria({key: list(range(1, MAX_LIST_ITEMS + 1))})
    with pytest.raises(ValidationError):
        parse_criteria({key: list(range(1, MAX_LIST_ITEMS + 2))})


@pytest.mark.django_db
def test_paging_bounds_are_the_enforced_ones(client, settings):
    # given
    props = criteria_schema(openapi(client))["properties"]

    # then
    assert (props["offset"]["minimum"], props["offset"]["maximum"]) == (0, INT32_MAX)
    assert props["limit"]["minimum"] == 1
    assert props["limit"]["maximum"] == min(settings.RETRIGGER_MAX_LIMIT, INT32_MAX)
    parse_criteria({"limit": props["limit"]["maximum"], "offset": INT32_MAX})
    with pytest.raises(ValidationError):
        parse_criteria({"limit": props["limit"]["maximum"] + 1})


SORT_SAMPLES = [
    "",
    "id",
    "-date",
    "DATE",
    "-date,id",
    " createdAt , -updatedAt ",
    "-PAYOUT,status,clickId",
    ",".join(SORT_COLUMNS),
    ",".join(f"-{c.upper()}" for c in SORT_COLUMNS),
    # refused (case 001 and relatives)
    "--date",
    ",",
    "-",
    "id,,date",
    "date desc",
    "id,",
    ",id",
    "nope",
    "i d",
    "id;",
    "- date",
    "\tid",
    "affiliate__name",
    "déte",
]


@pytest.mark.django_db
@pytest.mark.parametrize("sort", SORT_SAMPLES)
def test_the_sort_pattern_accepts_exactly_what_the_api_accepts(client, sort):
    # given
    pattern = re.compile(criteria_schema(openapi(client))["properties"]["sort"]["pattern"])

    # when
    try:
        parse_criteria({"sort": sort})
        accepted = True
    except ValidationError:
        accepted = False

    # then
    assert bool(pattern.search(sort)) == accepted


# --- real answers against the documented ones ------------------------------------------------


def _call(client, user=None, *, body=None, raw=None, query="", method="POST", path=URL, **h):
    if user is not None:
        h["authorization"] = f"Token {f.token_for(user)}"
    data = raw if raw is not None else json.dumps({} if body is None else body)
    return client.generic(method, path + query, data, headers=h, CONTENT_TYPE=JSON)


@pytest.mark.django_db(transaction=True)
def test_every_answer_fits_its_documented_status_and_shape(
    client, httpserver, allow_loopback, settings
):
    # given: an account with a conversion whose postback reaches a local receiver
    settings.POSTBACK_MAX_ATTEMPTS = 1
    httpserver.expect_request("/pb").respond_with_data("ok")
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, httpserver.url_for("/pb"))
    for _ in range(2):
        f.make_conversion(affiliate)
    admin = f.make_account_admin(account)
    member = f.make_member(account)
    schema = openapi(client)

    # when: one request per documented answer
    answers: dict[str, tuple[str, str, Any]] = {}

    def record(name, response, path=URL, method="post"):
        answers[name] = (path, method, response)

    record("200 dry run", _call(client, admin, query="?dryRun=1"))
    record("200 run", _call(client, admin, body={"limit": 1}))
    record("200 keyed", _call(client, admin, body={"limit": 1}, **{"idempotency-key": "k"}))
    record("422", _call(client, admin, body={"limit": 2}, **{"idempotency-key": "k"}))
    info = parse_criteria({"limit": 3}).to_info(force=False, dry_run=False)
    IdempotencyRecord.objects.create(
        user=admin,
        key="busy",
        fingerprint=idempotency.fingerprint(info),
        status_code=0,
        response={},
    )
    settings.RETRIGGER_IDEMPOTENCY_WAIT = 0
    record("409", _call(client, admin, body={"limit": 3}, **{"idempotency-key": "busy"}))
    settings.RETRIGGER_SYNC_MAX = 0
    queued = _call(client, admin, body={"sort": "-id"})
    record("202", queued)
    run_path = "/api/conversions/retrigger-runs/{run_id}"
    record("run 200", _call(client, admin, method="GET", path=queued["Location"]), run_path, "get")
    record(
        "cancel 200",
        _call(client, admin, path=queued["Location"] + "/cancel"),
        run_path + "/cancel",
    )
    missing = "/api/conversions/retrigger-runs/999999"
    record("run 404", _call(client, admin, method="GET", path=missing), run_path, "get")
    record("run 401", _call(client, method="GET", path=missing), run_path, "get")
    record("run 405", _call(client, admin, method="PUT", path=missing), run_path, "get")
    record("400 body", _call(client, admin, body={"sort": "--id", "x": 1}))
    record("400 json", _call(client, admin, raw=b"{"))
    record("400 flag", _call(client, admin, query="?force=maybe"))
    record("401", _call(client))
    record("403 member", _call(client, member))
    record("403 account", _call(client, admin, body={"accountId": [f.make_account().pk]}))
    record("405", _call(client, admin, method="GET"))
    record(
        "415",
        client.post(
            URL,
            "a=1",
            content_type="text/plain",
            headers={"authorization": f"Token {f.token_for(admin)}"},
        ),
    )
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    record("413", _call(client, admin, body={"id": list(range(1, 50))}))
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
    settings.RETRIGGER_THROTTLE_RATE = "1/min"
    _call(client, admin, query="?dryRun=1")
    record("429", _call(client, admin, query="?dryRun=1"))

    # then
    problems = []
    for name, (path, method, response) in answers.items():
        responses = schema["paths"][path][method]["responses"]
        status = str(response.status_code)
        if not name.startswith(status) and not name.endswith(status):
            problems.append(f"{name}: unexpected status {status}")
            continue
        if status not in responses:
            problems.append(f"{name}: status {status} is not documented")
            continue
        content_type = response["Content-Type"].split(";")[0]
        documented = responses[status].get("content", {})
        if content_type not in documented:
            problems.append(f"{name}: {content_type} is not documented for {status}")
            continue
        body_schema = as_json_schema(copy.deepcopy(documented[content_type]["schema"]))
        validator = jsonschema.Draft7Validator(
            body_schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
        )
        for error in validator.iter_errors(response.json()):
            problems.append(f"{name}: {error.json_path}: {error.message}")
    assert problems == []
    assert queued["Location"].startswith("/api/conversions/retrigger-runs/")
    assert RetriggerRun.objects.count() == 3  # run, keyed run, queued
