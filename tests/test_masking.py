"""Secrets never reach stored URLs, messages or logs."""

from __future__ import annotations

import pytest

from conversions.delivery.masking import is_secret_param, mask_text, mask_url, url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://t.example/pb?cid=1&token=abc123&amt=7.10",
            "https://t.example/pb?cid=1&token=***&amt=7.10",
        ),
        ("https://user:hunter2@t.example/pb", "https://user:***@t.example/pb"),
        ("https://t.example/pb?api_key=k&apikey=k2&key=k3", "https://t.example/pb?api_key=***&apikey=***&key=***"),
        ("https://t.example/pb?Secret=s&PASSWORD=p&pass=p2", "https://t.example/pb?Secret=***&PASSWORD=***&pass=***"),
        ("https://t.example/pb?sig=s&signature=s2&hash=h", "https://t.example/pb?sig=***&signature=***&hash=***"),
        ("https://t.example/pb?auth=a&access_token=t", "https://t.example/pb?auth=***&access_token=***"),
        ("https://t.example/pb?x-api-key=a&client_secret=b&authToken=c", "https://t.example/pb?x-api-key=***&client_secret=***&authToken=***"),
        ("https://t.example/pb#access_token=frag", "https://t.example/pb#access_token=***"),
        ("https://t.example/pb?click_id=1&sub1=x&amt=2&keyword=k", "https://t.example/pb?click_id=1&sub1=x&amt=2&keyword=k"),
        ("https://t.example/pb?token=&flag", "https://t.example/pb?token=&flag"),
        ("https://t.example/pb?a=1&&b", "https://t.example/pb?a=1&&b"),
    ],
)  # fmt: skip
def test_mask_url(url, expected):
    assert mask_url(url) == expected


@pytest.mark.parametrize(
    ("url", "secret", "expected"),
    [
        ("https://t.example/pb/s3cr3t/x", "s3cr3t", "https://t.example/pb/***/x"),
        ("https://t.example/pb?v=a%20b%26c", "a b&c", "https://t.example/pb?v=***"),
        ("https://t.example/pb?v=a+b", "a b", "https://t.example/pb?v=***"),
        ("https://t.example/pb?v=1", "", "https://t.example/pb?v=1"),
    ],
)
def test_given_secrets_are_masked_in_every_spelling(url, secret, expected):
    assert mask_url(url, secrets=[secret]) == expected


def test_mask_url_never_raises_on_garbage():
    # when
    masked = mask_url("http://[::1/pb?token=abc", secrets=["zzz"])

    # then
    assert "abc" not in masked


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Max retries exceeded with url: /pb?token=abc123&c=1 (Caused by ...)",
            "Max retries exceeded with url: /pb?token=*** (Caused by ...)".replace(
                "***", "***&c=1"
            ),
        ),
        ("GET http://u:pw@host/ failed", "GET http://u:***@host/ failed"),
        ("key='k1' other=x", "key='***' other=x"),
        ("api_key=k1, other=x", "api_key=***, other=x"),
    ],
)
def test_mask_text(text, expected):
    assert mask_text(text) == expected


def test_mask_text_masks_given_secrets():
    assert mask_text("bad signature for topsecret", secrets=["topsecret"]) == (
        "bad signature for ***"
    )


def test_url_secrets_collects_values_to_mask_in_messages():
    # when
    found = url_secrets("https://u:pw@t.example/pb?token=a%2Bb&cid=1#sig=z")

    # then
    assert {"pw", "a%2Bb", "a+b", "z"} <= set(found)
    assert "1" not in found


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("TOKEN", True),
        ("api-key", True),
        ("x_auth_token", True),
        ("sessionToken", True),
        ("pwd", True),
        ("click_id", False),
        ("monkey", False),
        ("keyword", False),
        ("sub1", False),
    ],
)
def test_is_secret_param(name, secret):
    assert is_secret_param(name) is secret


# The shortcut for URLs expanded from a template must agree with the full parse on every
# template, including values built to look like parameters, passwords and fragments.
EXPANSION_TEMPLATES = [
    "https://t.example/pb?click={click_id}&payout={payout}",
    "https://t.example/pb?token={sub1}&c={click_id}",
    "https://t.example/pb?{sub1}={sub2}&c=1",
    "https://t.example/pb?x{sub1}=v",
    "https://t.example/pb?a={sub1}#frag={sub2}",
    "https://t.example/pb#{sub1}=1&access_token={sub2}",
    "https://u:{sub1}@t.example/pb?c={click_id}",
    "https://{sub1}.t.example/pb?c={click_id}",
    "https://t.example/{sub1}/{sub2}?c=%7Bclick_id%7D",
    "https://t.example/pb?token=&c={sub1}",
    "https://t.example/pb?c={sub1}&apikey=fixed",
    "https://t.example:99999/pb?c={sub1}",
    "https://t.example/pb?c={sub1}{sub2}&{sub3}",
]
EXPANSION_VALUES = [
    "plain",
    "token=abc",
    "a&token=x",
    "u:p@h",
    "#access_token=z",
    "%74oken",
    "whsec_s3",
]


@pytest.mark.parametrize("template", EXPANSION_TEMPLATES)
@pytest.mark.parametrize("value", EXPANSION_VALUES)
@pytest.mark.parametrize("secret", ["", "whsec_s3"])
def test_mask_expanded_url_agrees_with_the_full_parse(template, value, secret):
    from conversions.delivery.macros import expand_url
    from conversions.delivery.masking import mask_expanded_url

    url = expand_url(template, {"sub1": value, "sub2": value, "sub3": value, "click_id": "c1"})
    masked, secrets = mask_expanded_url(url, template=template, secret=secret)
    assert masked == mask_url(url, secrets=[secret])
    assert set(secrets) == set(filter(None, [secret, *url_secrets(url)]))
