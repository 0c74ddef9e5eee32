"""Entities of the re-trigger product: fields, choices, indexes, constraints.

Business rules live in services.py/delivery/; this module only describes data.
"""

import hashlib
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class TimestampedModel(models.Model):
    """`created_at`/`updated_at` set on ordinary saves; a fixture's values are kept.

    `auto_now*` would overwrite fixture values (loaddata calls `save_base`, not `save`),
    so the fields are plain defaults and `save()` moves `updated_at` on updates.
    """

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        # On creation the defaults (now) or explicitly given values stand; every later
        # ordinary save moves `updated_at`.
        if not self._state.adding:
            self.updated_at = timezone.now()
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "updated_at"}
        super().save(*args, **kwargs)


class Account(models.Model):
    id = models.IntegerField(primary_key=True, validators=[MinValueValidator(1)])
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Brand(models.Model):
    id = models.IntegerField(primary_key=True, validators=[MinValueValidator(1)])
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="brands")
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class TrafficSource(models.Model):
    id = models.IntegerField(primary_key=True, validators=[MinValueValidator(1)])
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="traffic_sources")
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class ConversionType(models.Model):
    id = models.IntegerField(primary_key=True, validators=[MinValueValidator(1)])
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Affiliate(models.Model):
    id = models.IntegerField(
        primary_key=True, validators=[MinValueValidator(1), MaxValueValidator(INT32_MAX)]
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="affiliates")
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Postback(models.Model):
    class Method(models.TextChoices):
        GET = "GET", "GET"
        POST = "POST", "POST"

    affiliate = models.ForeignKey(Affiliate, on_delete=models.CASCADE, related_name="postbacks")
    url = models.CharField(
        max_length=2000,
        help_text="URL template; macros such as {click_id} and {payout} are filled in.",
    )
    method = models.CharField(max_length=4, choices=Method.choices, default=Method.GET)
    conversion_type = models.ForeignKey(
        ConversionType,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        help_text="Empty means every conversion type.",
    )
    is_active = models.BooleanField(default=True)
    secret = models.CharField(
        max_length=200, blank=True, help_text="Signing secret for POST; blank = unsigned."
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Postback #{self.pk} ({self.method})"

    def clean(self) -> None:
        # Imported here: the validator lives with the delivery code it protects.
        from django.core.exceptions import ValidationError

        from conversions.delivery.validation import validate_postback_template

        try:
            validate_postback_template(self.url)
        except ValidationError as exc:
            # On the field, so forms show it next to the URL.
            raise ValidationError({"url": exc.error_list}) from exc


class Conversion(TimestampedModel):
    class Status(models.TextChoices):
        APPROVED = "approved", "approved"
        PENDING = "pending", "pending"
        REJECTED = "rejected", "rejected"

    id = models.BigIntegerField(
        primary_key=True, validators=[MinValueValidator(1), MaxValueValidator(INT64_MAX)]
    )
    # The composite (column, id) indexes below serve both the filter and the sort with
    # the id tie-breaker, so the plain FK indexes would only duplicate them.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, db_index=False)
    affiliate = models.ForeignKey(Affiliate, on_delete=models.CASCADE, db_index=False)
    brand = models.ForeignKey(
        Brand, on_delete=models.SET_NULL, null=True, blank=True, db_index=False
    )
    traffic_source = models.ForeignKey(
        TrafficSource, on_delete=models.SET_NULL, null=True, blank=True, db_index=False
    )
    conversion_type = models.ForeignKey(ConversionType, on_delete=models.PROTECT, db_index=False)
    click_id = models.UUIDField()
    transaction_id = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.APPROVED)
    payout = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="USD")
    converted_at = models.DateTimeField()
    sub1 = models.CharField(max_length=500, blank=True)
    sub2 = models.CharField(max_length=500, blank=True)
    sub3 = models.CharField(max_length=500, blank=True)
    sub4 = models.CharField(max_length=500, blank=True)
    sub5 = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["click_id", "id"], name="conv_click_id_idx"),
            models.Index(fields=["transaction_id", "id"], name="conv_txn_id_idx"),
            models.Index(fields=["account", "id"], name="conv_account_id_idx"),
            models.Index(fields=["account", "converted_at", "id"], name="conv_account_date_idx"),
            models.Index(fields=["affiliate", "id"], name="conv_affiliate_id_idx"),
            models.Index(fields=["brand", "id"], name="conv_brand_id_idx"),
            models.Index(fields=["traffic_source", "id"], name="conv_source_id_idx"),
            models.Index(fields=["conversion_type", "id"], name="conv_type_id_idx"),
            models.Index(fields=["converted_at", "id"], name="conv_date_id_idx"),
            models.Index(fields=["created_at", "id"], name="conv_created_id_idx"),
            models.Index(fields=["updated_at", "id"], name="conv_updated_id_idx"),
            models.Index(fields=["payout", "id"], name="conv_payout_id_idx"),
            models.Index(fields=["status", "id"], name="conv_status_id_idx"),
        ]

    def __str__(self) -> str:
        return f"Conversion #{self.pk}"


class AccountMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "admin"
        MEMBER = "member", "member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account_memberships"
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "account"], name="membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.account} ({self.role})"


class SkipReason(models.TextChoices):
    """In the contract's order of precedence: a pair counts under the first that applies."""

    AFFILIATE_INACTIVE = "affiliate_inactive"
    NO_POSTBACK = "no_postback"
    IN_PROGRESS = "in_progress"
    REJECTED = "rejected"
    ALREADY_DELIVERED = "already_delivered"


class RetriggerRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        API = "api"
        ADMIN = "admin"
        COMMAND = "command"

    FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    actor = models.CharField(max_length=150, help_text="Who started it, as recorded.")
    source = models.CharField(max_length=10, choices=Source.choices)
    criteria = models.JSONField(help_text="The criteria as understood (the API's `info`).")
    force = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    accounts = models.ManyToManyField(Account, blank=True, related_name="retrigger_runs")
    scope_account_ids = models.JSONField(
        null=True,
        blank=True,
        help_text="Accounts the actor may act in (null = every account).",
    )

    matched = models.BigIntegerField(default=0)
    selected = models.BigIntegerField(default=0)
    processed = models.BigIntegerField(default=0)
    retriggered = models.BigIntegerField(default=0)
    delivered = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    skipped = models.BigIntegerField(default=0)
    # One column per reason so concurrent workers can add with F() expressions.
    skipped_affiliate_inactive = models.BigIntegerField(default=0)
    skipped_no_postback = models.BigIntegerField(default=0)
    skipped_in_progress = models.BigIntegerField(default=0)
    skipped_rejected = models.BigIntegerField(default=0)
    skipped_already_delivered = models.BigIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    workers = models.PositiveSmallIntegerField(
        default=1,
        help_text="Workers sharing the run at once; each opens at most "
        "POSTBACK_HOST_CONCURRENCY / workers connections to a host, so together they "
        "keep to the cap.",
    )
    planned = models.BooleanField(
        default=False, help_text="The selection has been cut into chunks (background runs)."
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_hb_idx")]

    def __str__(self) -> str:
        return f"Run #{self.pk} ({self.status})"

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        counts = {reason.value: getattr(self, f"skipped_{reason.value}") for reason in SkipReason}
        return {reason: count for reason, count in counts.items() if count}

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES


class RetriggerChunk(models.Model):
    """A slice of a background run's selection; workers claim chunks one at a time."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"

    run = models.ForeignKey(RetriggerRun, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    conversion_ids = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    worker = models.CharField(max_length=100, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="chunk_run_seq_unique")]
        indexes = [models.Index(fields=["run", "status"], name="chunk_run_status_idx")]

    def __str__(self) -> str:
        return f"Chunk {self.seq} of run {self.run_id} ({self.status})"


class RunItem(models.Model):
    """One conversion counted in a run, with its outcome.

    Written in the same transaction as the run's counters, so a run taken over after a
    crash knows exactly which conversions it has already counted.
    """

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        FAILED = "failed"
        SKIPPED = "skipped"

    # db_index=False: the (run, conversion) unique constraint serves lookups by run.
    # No database-level foreign keys: see DeliveryClaim.
    run = models.ForeignKey(
        RetriggerRun,
        on_delete=models.CASCADE,
        related_name="items",
        db_index=False,
        db_constraint=False,
    )
    conversion = models.ForeignKey(
        Conversion, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "conversion"], name="run_item_unique")
        ]
        indexes = [models.Index(fields=["conversion", "-id"], name="run_item_last_idx")]

    def __str__(self) -> str:
        return f"Conversion {self.conversion_id} in run {self.run_id}: {self.outcome}"


class DeliveryClaim(models.Model):
    """A (conversion, postback) pair being fired right now: never twice at once."""

    # No database-level foreign keys on the delivery path's bulk tables (claims, run items,
    # attempts): PostgreSQL checks each one per inserted row at COMMIT, and that was about
    # 40 % of the database's CPU in the benchmark. Django's on_delete still cascades.
    conversion = models.ForeignKey(
        Conversion, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    postback = models.ForeignKey(
        Postback, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    run = models.ForeignKey(
        RetriggerRun, on_delete=models.CASCADE, related_name="claims", db_constraint=False
    )
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversion", "postback"], name="claim_pair_unique")
        ]

    def __str__(self) -> str:
        return f"Claim of {self.conversion_id}/{self.postback_id} by run {self.run_id}"


class DeliveryAttempt(models.Model):
    class Error(models.TextChoices):
        TIMEOUT = "timeout"
        CONNECTION_ERROR = "connection_error"
        HTTP_STATUS = "http_status"
        BLOCKED_ADDRESS = "blocked_address"

    # db_index=False: `attempt_run_conv_idx` (run, conversion) serves lookups by run too,
    # and every attempt written pays for each index kept.
    # No database-level foreign keys: see DeliveryClaim.
    run = models.ForeignKey(
        RetriggerRun,
        on_delete=models.CASCADE,
        related_name="attempts",
        db_index=False,
        db_constraint=False,
    )
    conversion = models.ForeignKey(
        Conversion, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    postback = models.ForeignKey(
        Postback, on_delete=models.CASCADE, related_name="attempts", db_constraint=False
    )
    affiliate = models.ForeignKey(
        Affiliate, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    event_id = models.UUIDField(help_text="Stable for a (conversion, postback) pair.")
    attempt_number = models.PositiveSmallIntegerField()
    method = models.CharField(max_length=4)
    url = models.TextField(help_text="The URL sent, secrets masked.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=20, choices=Error.choices, blank=True)
    error_detail = models.CharField(max_length=500, blank=True)
    delivered = models.BooleanField(default=False, help_text="A 2xx answer.")
    final = models.BooleanField(default=False, help_text="The last try of this pair in its run.")
    duration_ms = models.PositiveIntegerField(default=0)
    response_excerpt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["conversion", "postback"], name="attempt_pair_idx"),
            models.Index(
                fields=["conversion", "postback"],
                condition=models.Q(delivered=True),
                name="attempt_delivered_pair_idx",
            ),
            models.Index(fields=["run", "conversion"], name="attempt_run_conv_idx"),
        ]

    def __str__(self) -> str:
        return f"Attempt #{self.pk} of {self.conversion_id}/{self.postback_id}"

    @staticmethod
    def event_id_for(conversion_id: int, postback_id: int) -> uuid.UUID:
        return uuid.uuid5(EVENT_NAMESPACE, f"{conversion_id}:{postback_id}")

    @staticmethod
    def event_id_text(conversion_id: int, postback_id: int) -> str:
        """`str(event_id_for(...))` without the `UUID` object: the delivery path makes one
        per postback, and building and printing the object cost more than the hash."""
        digest = hashlib.sha1(
            _EVENT_NAMESPACE_BYTES + f"{conversion_id}:{postback_id}".encode(),
            usedforsecurity=False,
        ).hexdigest()
        # RFC 9562 version 5: the version nibble is 5, the variant's two top bits are 10.
        variant = "89ab"[int(digest[16], 16) & 0x3]
        return (
            f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"
        )


EVENT_NAMESPACE = uuid.UUID("6f1c2a52-3c1e-4f59-9a55-0d7c1e3f9b21")
_EVENT_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


class IdempotencyRecord(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of body and flags.")
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    run = models.ForeignKey(RetriggerRun, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key_unique")
        ]

    def __str__(self) -> str:
        return f"Idempotency key {self.key[:20]} of user {self.user_id}"
