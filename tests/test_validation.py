"""Save-time refusals and acceptances of postback URL templates."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from conversions.delivery.validation import validate_postback_template
from conversions.models import Postback
from tests.factories import make_account, make_affiliate

REFUSED = [
    # (template, error code)
    ("", "required"),
    ("https://t.example/pb?x={nope}", "unknown_macro"),
    ("https://t.example/pb?x=%7Bclickid%7D", "unknown_macro"),
    ("https://t.example/pb?x={Click_ID}", "unknown_macro"),
    ("ftp://t.example/pb", "invalid_scheme"),
    ("javascript:alert(1)", "invalid_scheme"),
    ("file:///etc/passwd", "invalid_scheme"),
    ("t.example/pb?x={click_id}", "invalid_scheme"),
    ("https:///pb", "missing_host"),
    ("http://:80/pb", "missing_host"),
    ("https://t.example:99999/pb", "invalid"),
    ("https://t.example:0/pb", "invalid"),
    ("https://t.example/p b", "invalid"),
    ("https://t.example/pb\n", "invalid"),
    ("https://{sub1}.t.example/pb", "macro_in_host"),
    ("https://t.example:{sub1}/pb", "macro_in_host"),
    ("https://user:{sub1}@t.example/pb", "macro_in_host"),
    ("http://999.1.1.1/pb", "invalid_host"),
    ("http://1.2.3.4.5/pb", "invalid_host"),
    ("http://127.0.0.1/pb", "blocked_address"),
    ("http://127.0.0.1:8080/pb?c={click_id}", "blocked_address"),
    ("http://localhost.:80/", None),  # a name: left to the send-time guard (accepted)
    ("http://10.1.2.3/pb", "blocked_address"),
    ("http://172.16.0.1/pb", "blocked_address"),
    ("http://192.168.1.1/pb", "blocked_address"),
    ("http://169.254.169.254/latest/meta-data", "blocked_address"),
    ("http://100.64.0.1/pb", "blocked_address"),
    ("http://0.0.0.0/pb", "blocked_address"),
    ("http://224.0.0.1/pb", "blocked_address"),
    ("http://255.255.255.255/pb", "blocked_address"),
    ("http://2130706433/pb", "blocked_address"),
    ("http://0x7f.1/pb", "blocked_address"),
    ("http://0x7F000001/pb", "blocked_address"),
    ("http://0177.0.0.1/pb", "blocked_address"),
    ("http://127.1/pb", "blocked_address"),
    ("http://017700000001/pb", "blocked_address"),
    ("http://127.0.0.1./pb", "blocked_address"),
    ("http://[::1]/pb", "blocked_address"),
    ("http://[::]/pb", "blocked_address"),
    ("http://[fe80::1]/pb", "blocked_address"),
    ("http://[fc00::1]/pb", "blocked_address"),
    ("http://[ff02::1]/pb", "blocked_address"),
    ("http://[::ffff:127.0.0.1]/pb", "blocked_address"),
    ("http://[::ffff:7f00:1]/pb", "blocked_address"),
    ("http://[64:ff9b::a00:1]/pb", "blocked_address"),
    ("http://[2002:c0a8:101::1]/pb", "blocked_address"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/pb", "blocked_address"),
    ("http://[::1/pb", "invalid"),
    ("http://[not-an-ip]/pb", "invalid"),
]

ACCEPTED = [
    "https://tracker.example/pb?cid={click_id}&s1={sub1}&amt={payout}",
    "https://tracker.example/pb?cid=%7Bclick_id%7D",
    "HTTPS://Tracker.Example:8443/pb/{event_id}?t={timestamp}",
    "http://8.8.8.8/pb?x={conversion_id}",
    "http://[2606:4700:4700::1111]/pb",
    "http://[::ffff:8.8.8.8]/pb",
    "http://[64:ff9b::808:808]/pb",
    "https://user:pw@tracker.example/pb",
    "https://tracker.example/pb#frag={sub5}",
    "https://bücher.example/pb",
    "http://localhost.:80/",
]


@pytest.mark.parametrize(("template", "code"), [(t, c) for t, c in REFUSED if c])
def test_refused_templates(template, code):
    # when
    with pytest.raises(ValidationError) as caught:
        validate_postback_template(template)

    # then
    assert caught.value.code == code


@pytest.mark.parametrize("template", ACCEPTED)
def test_accepted_templates(template):
    # when / then (no error)
    assert validate_postback_template(template) is None


def test_unknown_macro_message_names_it():
    # when
    with pytest.raises(ValidationError) as caught:
        validate_postback_template("https://t.example/pb?a={sub6}&b={payout}")

    # then
    assert "{sub6}" in caught.value.messages[0]
    assert "{payout}" not in caught.value.messages[0].split(".")[0]


@pytest.mark.parametrize(
    ("allowed", "template", "refused"),
    [
        ([], "http://127.0.0.1:8000/pb", True),
        (["127.0.0.1/32"], "http://127.0.0.1:8000/pb", False),
        (["127.0.0.1/32"], "http://127.0.0.2:8000/pb", True),
        (["127.0.0.1/32"], "http://2130706433:8000/pb", False),
        (["10.0.0.0/8"], "http://10.20.30.40/pb", False),
        (["10.0.0.0/8"], "http://[::ffff:10.20.30.40]/pb", True),
    ],
)
def test_allow_list_opens_exactly_its_networks(settings, allowed, template, refused):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = allowed

    # when
    try:
        validate_postback_template(template)
        error = None
    except ValidationError as exc:
        error = exc

    # then
    assert (error is not None) is refused


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://tracker.example/pb?cid={click_id}", True),
        ("https://tracker.example/pb?cid={clickid}", False),
        ("http://0x7f.1/pb", False),
        ("gopher://tracker.example/", False),
    ],
)
def test_full_clean_refuses_what_validation_refuses(url, ok):
    # given
    affiliate = make_affiliate(make_account())
    postback = Postback(affiliate=affiliate, url=url, method="GET")

    # when
    try:
        postback.full_clean()
        errors = {}
    except ValidationError as exc:
        errors = exc.message_dict

    # then
    assert (errors == {}) is ok


@pytest.mark.parametrize(
    "url",
    ["http://127\u30020\u30020\u30022:18080/a", "http://127\uff0e0\uff0e0\uff0e2/a"],
)
def test_look_alike_dots_are_judged_as_the_address_they_resolve_to(url):
    # IDNA maps these dots to '.', so the host is 127.0.0.2 to any resolver.
    with pytest.raises(ValidationError) as error:
        validate_postback_template(url)

    assert error.value.code == "blocked_address"


def test_an_internationalised_name_is_accepted():
    validate_postback_template("https://b\u00fccher.example/pb?c={click_id}")


@pytest.mark.django_db
def test_postback_full_clean_puts_the_error_on_the_url_field():
    from conversions.models import Postback
    from tests import factories as f

    postback = Postback(affiliate=f.make_affiliate(f.make_account()), url="http://10.0.0.1/pb")

    with pytest.raises(ValidationError) as error:
        postback.full_clean()

    assert list(error.value.message_dict) == ["url"]
