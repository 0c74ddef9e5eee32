"""Load the demo data set: accounts, affiliates with postback templates, conversions.

    manage.py seed_demo --conversions 5000 \\
        --healthy-url http://127.0.0.1:PORT1 --failing-url http://127.0.0.1:PORT2 \\
        --slow-url http://127.0.0.1:PORT3 --superuser admin

Idempotent: reference rows are updated in place under fixed ids (so a rerun only moves
the postback URLs to the receivers' new ports and keeps the delivery history), and
conversions are generated deterministically from `--seed` and inserted only where their
id is missing. Dates are spread over the `--days` before today (UTC), so "the last 30
days" always finds data.

Passwords of the users it creates come from the environment variable
DEMO_ADMIN_PASSWORD, never from the command line, where `ps` would show them.
"""

import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import no_style
from django.db import connection, transaction

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

# Beyond the int32 range on purpose: conversion ids are int64 in the contract.
FIRST_CONVERSION_ID = 5_000_000_001
# A Standard Webhooks secret (whsec_ + base64). Demo only; the receiver verifies with it.
DEMO_SECRET = "whsec_ZGVtby1zaWduaW5nLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24="

ACCOUNTS = [
    # id, name, currency, brands, traffic sources
    (
        1,
        "Northwind Gaming",
        "EUR",
        ["Northwind Casino", "Northwind Poker"],
        ["Google Ads", "Facebook", "SEO"],
    ),
    (
        2,
        "Globex Sportsbook",
        "GBP",
        ["Globex Bet", "Globex Live"],
        ["Google Ads", "TikTok", "Email"],
    ),
    (3, "Initech Commerce", "USD", ["Initech Store"], ["Google Ads", "Affiliate network"]),
]

CONVERSION_TYPES = [(1, "registration"), (2, "deposit"), (3, "sale")]


@dataclass(frozen=True)
class DemoPostback:
    id: int
    receiver: str  # healthy | failing | slow
    path: str  # appended to the receiver's base URL; may hold macros
    method: str = Postback.Method.GET
    type_name: str | None = None  # None = every conversion type
    is_active: bool = True
    signed: bool = False


@dataclass(frozen=True)
class DemoAffiliate:
    id: int
    account_id: int
    name: str
    weight: int  # share of the conversions
    postbacks: tuple[DemoPostback, ...] = ()
    is_active: bool = True


AFFILIATES = [
    DemoAffiliate(
        1001,
        1,
        "ClickPeak Media",
        22,
        (
            DemoPostback(
                1,
                "healthy",
                "/pb/clickpeak?click_id={click_id}&payout={payout}&currency={currency}"
                "&status={status}&type={conversion_type}&sub1={sub1}&event_id={event_id}",
            ),
        ),
    ),
    DemoAffiliate(
        1002,
        1,
        "Lucky Leads",
        18,
        (
            # One template per type; their sales have none (skipped as no_postback).
            DemoPostback(
                2,
                "healthy",
                "/pb/luckyleads/reg?cid={click_id}&ts={timestamp}&event_id={event_id}",
                type_name="registration",
            ),
            DemoPostback(
                3,
                "healthy",
                "/pb/luckyleads/ftd?cid={click_id}&amount={revenue}&cur={currency}"
                "&event_id={event_id}",
                type_name="deposit",
            ),
        ),
    ),
    DemoAffiliate(
        1003,
        1,
        "SignalHub",
        8,
        (
            DemoPostback(
                4,
                "healthy",
                "/hooks/signalhub?event_id={event_id}",
                method=Postback.Method.POST,
                signed=True,
            ),
        ),
    ),
    DemoAffiliate(
        1004,
        2,
        "Brokenpipe Ads",
        4,
        (DemoPostback(5, "failing", "/pb?click_id={click_id}&event_id={event_id}"),),
    ),
    DemoAffiliate(
        1005,
        2,
        "Tortoise Traffic",
        2,
        (DemoPostback(6, "slow", "/pb?click_id={click_id}&payout={payout}&event_id={event_id}"),),
    ),
    DemoAffiliate(
        1006,
        2,
        "Dormant Partners",
        5,
        (DemoPostback(7, "healthy", "/pb/dormant?click_id={click_id}&event_id={event_id}"),),
        is_active=False,
    ),
    DemoAffiliate(1007, 2, "Organic Only", 6),  # no postback at all
    DemoAffiliate(
        1008,
        3,
        "ShopRefer",
        15,
        (
            DemoPostback(
                8,
                "healthy",
                "/pb/shoprefer?order={transaction_id}&amount={revenue}&cur={currency}"
                "&sub2={sub2}&event_id={event_id}",
                type_name="sale",
            ),
        ),
    ),
    DemoAffiliate(
        1009,
        3,
        "Paused Postbacks",
        5,
        (
            DemoPostback(
                9, "healthy", "/pb/paused?click_id={click_id}&event_id={event_id}", is_active=False
            ),
        ),
    ),
    DemoAffiliate(
        1010,
        3,
        "MultiNet",
        15,
        (
            DemoPostback(
                10,
                "healthy",
                "/pb/multinet?click_id={click_id}&conv={conversion_id}"
                "&aff={affiliate_id}&acc={account_id}&brand={brand_id}"
                "&src={traffic_source_id}&at={converted_at}&s1={sub1}&s2={sub2}"
                "&s3={sub3}&event_id={event_id}",
            ),
            DemoPostback(
                11, "healthy", "/hooks/multinet?event_id={event_id}", method=Postback.Method.POST
            ),
        ),
    ),
]

# (name, role per account id) — the superuser is made separately from --superuser.
DEMO_USERS = [
    ("northwind-admin", {1: AccountMembership.Role.ADMIN}),
    ("globex-member", {2: AccountMembership.Role.MEMBER}),
]

STATUS_WEIGHTS = [("approved", 78), ("pending", 13), ("rejected", 9)]
TYPE_WEIGHTS = {
    1: [("registration", 55), ("deposit", 40), ("sale", 5)],
    2: [("registration", 50), ("deposit", 45), ("sale", 5)],
    3: [("registration", 30), ("deposit", 0), ("sale", 70)],
}
PAYOUT_RANGES = {
    "registration": (Decimal("1.50"), Decimal("6.00")),
    "deposit": (Decimal("15.00"), Decimal("150.00")),
    "sale": (Decimal("4.00"), Decimal("60.00")),
}
CAMPAIGNS = ["spring-promo", "brand-search", "retarget", "vip", "", ""]
# Values that need percent-encoding where they land in a URL.
SUB2_VALUES = ["", "", "", "utm=mail&list=vip users", "a&b=c d", "ünïcode/path?x=1"]
COUNTRIES = ["DE", "GB", "US", "FR", "ES", "NL", "SE"]


class Command(BaseCommand):
    help = "Load (or refresh) the realistic demo data set used by scripts/demo.sh."

    def add_arguments(self, parser):
        parser.add_argument("--conversions", type=int, default=5000)
        parser.add_argument("--days", type=int, default=90, help="spread dates over N days")
        parser.add_argument("--seed", type=int, default=20260101)
        parser.add_argument("--healthy-url", default="http://127.0.0.1:18001")
        parser.add_argument("--failing-url", default="http://127.0.0.1:18002")
        parser.add_argument("--slow-url", default="http://127.0.0.1:18003")
        parser.add_argument("--secret", default=DEMO_SECRET, help="for the signed POST")
        parser.add_argument(
            "--superuser",
            metavar="USERNAME",
            help="create/update this superuser and the demo users with DEMO_ADMIN_PASSWORD",
        )

    def handle(self, *args, **options):
        if options["conversions"] < 0 or options["days"] < 1:
            raise CommandError("--conversions must be >= 0 and --days >= 1")
        password = os.environ.get("DEMO_ADMIN_PASSWORD", "")
        if options["superuser"] and not password:
            raise CommandError("--superuser needs the password in DEMO_ADMIN_PASSWORD")
        receivers = {
            "healthy": options["healthy_url"].rstrip("/"),
            "failing": options["failing_url"].rstrip("/"),
            "slow": options["slow_url"].rstrip("/"),
        }

        with transaction.atomic():
            types = self._reference_data(receivers, options["secret"])
            if options["superuser"]:
                self._users(options["superuser"], password)
            before = Conversion.objects.filter(id__gte=FIRST_CONVERSION_ID).count()
            rows = generate_conversions(
                count=options["conversions"],
                days=options["days"],
                seed=options["seed"],
                types=types,
            )
            Conversion.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
            after = Conversion.objects.filter(id__gte=FIRST_CONVERSION_ID).count()

        self.stdout.write(
            f"demo data: {len(ACCOUNTS)} accounts, {Brand.objects.count()} brands, "
            f"{TrafficSource.objects.count()} traffic sources, {len(types)} conversion types, "
            f"{len(AFFILIATES)} affiliates with "
            f"{sum(len(a.postbacks) for a in AFFILIATES)} postbacks, "
            f"{after} demo conversions ({after - before} new)"
        )

    def _reference_data(self, receivers: dict[str, str], secret: str) -> dict[str, ConversionType]:
        types = {}
        for type_id, name in CONVERSION_TYPES:
            # By name: the name is unique and another data set may already hold it.
            types[name], _ = ConversionType.objects.get_or_create(
                name=name, defaults={"id": type_id}
            )
        for account_id, name, _currency, brands, sources in ACCOUNTS:
            Account.objects.update_or_create(id=account_id, defaults={"name": name})
            for n, brand in enumerate(brands, start=1):
                Brand.objects.update_or_create(
                    id=account_id * 10 + n, defaults={"account_id": account_id, "name": brand}
                )
            for n, source in enumerate(sources, start=1):
                TrafficSource.objects.update_or_create(
                    id=account_id * 100 + n, defaults={"account_id": account_id, "name": source}
                )
        for affiliate in AFFILIATES:
            Affiliate.objects.update_or_create(
                id=affiliate.id,
                defaults={
                    "account_id": affiliate.account_id,
                    "name": affiliate.name,
                    "is_active": affiliate.is_active,
                },
            )
            for postback in affiliate.postbacks:
                # Fixed ids keep a pair's history (already_delivered) across reruns while
                # the URL follows the receivers to their new ports.
                Postback.objects.update_or_create(
                    id=postback.id,
                    defaults={
                        "affiliate_id": affiliate.id,
                        "url": receivers[postback.receiver] + postback.path,
                        "method": postback.method,
                        "conversion_type": types[postback.type_name]
                        if postback.type_name
                        else None,
                        "is_active": postback.is_active,
                        "secret": secret if postback.signed else "",
                    },
                )
        # Explicit ids leave PostgreSQL's sequence behind; move it past them so postbacks
        # added later in the admin do not collide (what loaddata does too).
        with connection.cursor() as cursor:
            for sql in connection.ops.sequence_reset_sql(no_style(), [Postback]):
                cursor.execute(sql)
        return types

    def _users(self, superuser: str, password: str) -> None:
        # One hash for every demo user: hashing is slow on purpose, once is enough.
        hashed = make_password(password)
        admin, _ = User.objects.get_or_create(
            username=superuser, defaults={"email": f"{superuser}@example.com"}
        )
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.password = hashed
        admin.save()
        for username, roles in DEMO_USERS:
            user, _ = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            user.is_staff = True
            user.is_active = True
            user.password = hashed
            user.save()
            for account_id, role in roles.items():
                AccountMembership.objects.update_or_create(
                    user=user, account_id=account_id, defaults={"role": role}
                )


def generate_conversions(
    *, count: int, days: int, seed: int, types: dict[str, ConversionType]
) -> list[Conversion]:
    """The same rows for the same (count, days, seed) on the same UTC day."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    currencies = {account_id: currency for account_id, _, currency, _, _ in ACCOUNTS}
    brand_ids = {
        account_id: [account_id * 10 + n for n in range(1, len(brands) + 1)]
        for account_id, _, _, brands, _ in ACCOUNTS
    }
    source_ids = {
        account_id: [account_id * 100 + n for n in range(1, len(sources) + 1)]
        for account_id, _, _, _, sources in ACCOUNTS
    }
    affiliates = AFFILIATES
    affiliate_weights = [a.weight for a in AFFILIATES]
    statuses, status_weights = zip(*STATUS_WEIGHTS, strict=True)
    # Deposits and sales often come from the click that registered earlier.
    recent_clicks: dict[int, list[uuid.UUID]] = {a.id: [] for a in AFFILIATES}

    rows = []
    for n in range(count):
        affiliate = rng.choices(affiliates, affiliate_weights)[0]
        account_id = affiliate.account_id
        type_names, type_weights = zip(*TYPE_WEIGHTS[account_id], strict=True)
        type_name = rng.choices(type_names, type_weights)[0]
        clicks = recent_clicks[affiliate.id]
        if type_name != "registration" and clicks and rng.random() < 0.6:
            click_id = rng.choice(clicks)
        else:
            click_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            clicks.append(click_id)
            del clicks[:-50]
        low, high = PAYOUT_RANGES[type_name]
        payout = (low + (high - low) * Decimal(rng.random())).quantize(Decimal("0.01"))
        revenue = (payout * Decimal(rng.uniform(1.2, 3.0))).quantize(Decimal("0.01"))
        converted_at = today - timedelta(seconds=rng.uniform(0, days * 86400))
        created_at = converted_at + timedelta(seconds=rng.uniform(1, 600))
        status = rng.choices(statuses, status_weights)[0]
        # Some rows were edited later (a pending deposit approved, a chargeback).
        if rng.random() < 0.2:
            updated_at = min(created_at + timedelta(hours=rng.uniform(1, 96)), now)
        else:
            updated_at = created_at
        conversion_id = FIRST_CONVERSION_ID + n
        prefix = "ORD" if type_name == "sale" else "TX"
        rows.append(
            Conversion(
                id=conversion_id,
                account_id=account_id,
                affiliate_id=affiliate.id,
                brand_id=rng.choice(brand_ids[account_id]) if rng.random() < 0.9 else None,
                traffic_source_id=rng.choice(source_ids[account_id])
                if rng.random() < 0.85
                else None,
                conversion_type=types[type_name],
                click_id=click_id,
                transaction_id=f"{prefix}-{account_id}-{conversion_id - FIRST_CONVERSION_ID:07d}",
                status=status,
                payout=payout,
                revenue=revenue,
                currency=currencies[account_id],
                converted_at=converted_at,
                created_at=created_at,
                updated_at=updated_at,
                sub1=rng.choice(CAMPAIGNS),
                sub2=rng.choice(SUB2_VALUES),
                sub3=rng.choice(COUNTRIES),
                sub4=f"creative-{rng.randint(1, 12)}" if rng.random() < 0.3 else "",
                sub5="",
            )
        )
    return rows
