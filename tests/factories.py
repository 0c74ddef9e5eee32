"""Plain helpers that make rows for tests; each takes overrides as keywords."""

import itertools
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from conversions.models import (
    Account,
    AccountMembership,
    Affiliate,
    Brand,
    Conversion,
    ConversionType,
    Postback,
    TrafficSource,
)

_ids = itertools.count(1000)


def next_id() -> int:
    return next(_ids)


def make_account(**kw) -> Account:
    kw.setdefault("id", next_id())
    kw.setdefault("name", f"Account {kw['id']}")
    return Account.objects.create(**kw)


def make_brand(account: Account, **kw) -> Brand:
    kw.setdefault("id", next_id())
    return Brand.objects.create(account=account, name=kw.pop("name", "Brand"), **kw)


def make_traffic_source(account: Account, **kw) -> TrafficSource:
    kw.setdefault("id", next_id())
    return TrafficSource.objects.create(account=account, name=kw.pop("name", "Source"), **kw)


def make_conversion_type(name: str = "sale", **kw) -> ConversionType:
    obj, _ = ConversionType.objects.get_or_create(name=name, defaults={"id": next_id(), **kw})
    return obj


def make_affiliate(account: Account, **kw) -> Affiliate:
    kw.setdefault("id", next_id())
    kw.setdefault("name", f"Affiliate {kw['id']}")
    return Affiliate.objects.create(account=account, **kw)


def make_postback(affiliate: Affiliate, url: str, **kw) -> Postback:
    return Postback.objects.create(affiliate=affiliate, url=url, **kw)


def make_conversion(affiliate: Affiliate, **kw) -> Conversion:
    kw.setdefault("id", next_id())
    kw.setdefault("account", affiliate.account)
    if "conversion_type" not in kw:
        kw["conversion_type"] = make_conversion_type()
    kw.setdefault("click_id", uuid.uuid4())
    kw.setdefault("transaction_id", f"tx-{kw['id']}")
    kw.setdefault("payout", Decimal("10.00"))
    kw.setdefault("revenue", Decimal("15.00"))
    kw.setdefault("converted_at", datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    return Conversion.objects.create(affiliate=affiliate, **kw)


def make_user(username: str | None = None, *, superuser: bool = False, **kw) -> User:
    username = username or f"user{next_id()}"
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw-12345678")
    return User.objects.create_user(username, f"{username}@example.com", "pw-12345678", **kw)


def make_account_admin(*accounts: Account, username: str | None = None) -> User:
    user = make_user(username)
    for account in accounts:
        AccountMembership.objects.create(
            user=user, account=account, role=AccountMembership.Role.ADMIN
        )
    return user


def make_member(*accounts: Account, username: str | None = None) -> User:
    user = make_user(username)
    for account in accounts:
        AccountMembership.objects.create(
            user=user, account=account, role=AccountMembership.Role.MEMBER
        )
    return user


def token_for(user: User) -> str:
    return Token.objects.get_or_create(user=user)[0].key
