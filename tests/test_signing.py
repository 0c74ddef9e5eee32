"""Standard Webhooks signatures, checked with the independent `standardwebhooks` package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conversions.delivery.signing import sign

BODY = b'{"click_id":"9b2f0c1e-1111-4a4a-8b8b-000000000001","payout":"7.10"}'
KEY = b"an-arbitrary-32-byte-signing-key"


@pytest.mark.parametrize(
    ("secret", "verifier_secret"),
    [
        ("whsec_" + base64.b64encode(KEY).decode(), "whsec_" + base64.b64encode(KEY).decode()),
        ("whsec_" + base64.b64encode(KEY).decode().rstrip("="), base64.b64encode(KEY).decode()),
        ("raw text secret ü", base64.b64encode("raw text secret ü".encode()).decode()),
        ("whsec_not base64!", base64.b64encode(b"whsec_not base64!").decode()),
    ],
    ids=["whsec", "whsec-unpadded", "raw", "whsec-garbage-is-raw"],
)
def test_signature_verifies_with_standardwebhooks(secret, verifier_secret):
    # given
    now = int(time.time())

    # when
    headers = sign(secret=secret, msg_id="evt-1", timestamp=now, body=BODY)

    # then
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(verifier_secret).verify(BODY, headers)["payout"] == "7.10"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "evt-2"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
    ],
    ids=["body", "id", "timestamp"],
)
def test_tampering_breaks_the_signature(tamper):
    # given
    secret = "whsec_" + base64.b64encode(KEY).decode()
    headers = sign(secret=secret, msg_id="evt-1", timestamp=int(time.time()), body=BODY)

    # when
    headers, body = tamper(headers, BODY)

    # then
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_known_vector():
    # given: HMAC-SHA256 over "msg_1.1700000000.{}" with key b"k" (computed independently)
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(b"k", b"msg_1.1700000000.{}", hashlib.sha256).digest())

    # when
    headers = sign(secret="k", msg_id="msg_1", timestamp=1700000000, body=b"{}")

    # then
    assert headers["webhook-signature"] == "v1," + expected.decode()


def test_empty_secret_is_refused():
    with pytest.raises(ValueError):
        sign(secret="", msg_id="m", timestamp=1, body=b"")
