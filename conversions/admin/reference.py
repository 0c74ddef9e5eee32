"""Reference data: accounts, brands, sources, types, affiliates, postbacks, memberships.

Superusers edit it; account admins see their accounts' rows read-only. Nothing here is
deletable from the admin except memberships: deleting an affiliate or postback would
cascade into the delivery history (deactivate it instead).
"""

from django.contrib import admin
from django.http import HttpRequest

from conversions.admin.scoping import ScopedModelAdmin, ScopedRelatedFilter, is_unrestricted
from conversions.delivery.masking import mask_url
from conversions.models import (
    Account,
    AccountMembership,
    Affiliate,
    Brand,
    ConversionType,
    IdempotencyRecord,
    Postback,
    TrafficSource,
)


@admin.register(Account)
class AccountAdmin(ScopedModelAdmin):
    account_path = "pk"
    editable = True
    list_display = ("id", "name")
    search_fields = ("=id", "name")


class _AccountOwnedAdmin(ScopedModelAdmin):
    account_path = "account_id"
    editable = True
    list_display = ("id", "name", "account")
    list_select_related = ("account",)
    list_filter = (("account", ScopedRelatedFilter),)
    search_fields = ("=id", "name")


@admin.register(Brand)
class BrandAdmin(_AccountOwnedAdmin):
    pass


@admin.register(TrafficSource)
class TrafficSourceAdmin(_AccountOwnedAdmin):
    pass


@admin.register(Affiliate)
class AffiliateAdmin(_AccountOwnedAdmin):
    list_display = ("id", "name", "account", "is_active")
    list_filter = ("is_active", ("account", ScopedRelatedFilter))


@admin.register(ConversionType)
class ConversionTypeAdmin(ScopedModelAdmin):
    # Shared by every account: visible to all account admins.
    editable = True
    list_display = ("id", "name")
    search_fields = ("=id", "name")


@admin.register(Postback)
class PostbackAdmin(ScopedModelAdmin):
    account_path = "affiliate__account_id"
    editable = True
    list_display = (
        "id",
        "affiliate",
        "method",
        "conversion_type",
        "is_active",
        "signed",
        "masked_url",
    )
    list_select_related = ("affiliate", "conversion_type")
    list_filter = (
        "is_active",
        "method",
        ("affiliate", ScopedRelatedFilter),
        ("conversion_type", ScopedRelatedFilter),
    )
    # Not the URL: a search over the stored template would let a viewer confirm the
    # masked secrets in it a character at a time.
    search_fields = ("=id", "=affiliate__id", "affiliate__name")
    raw_id_fields = ("affiliate",)

    def get_exclude(self, request: HttpRequest, obj=None):
        # The signing secret and credentials in the template are for whoever edits the
        # postback, not for every viewer; viewers get the masked URL instead.
        return () if is_unrestricted(request) else ("secret", "url")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return () if is_unrestricted(request) else ("masked_url",)

    @admin.display(description="URL template")
    def masked_url(self, obj: Postback) -> str:
        return mask_url(obj.url, secrets=[obj.secret] if obj.secret else [])

    @admin.display(description="signed", boolean=True)
    def signed(self, obj: Postback) -> bool:
        return bool(obj.secret)


@admin.register(AccountMembership)
class AccountMembershipAdmin(ScopedModelAdmin):
    account_path = "account_id"
    editable = True
    deletable = True
    list_display = ("id", "user", "account", "role")
    list_select_related = ("user", "account")
    list_filter = ("role", ("account", ScopedRelatedFilter))
    search_fields = ("user__username", "=account__id")
    raw_id_fields = ("user",)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ScopedModelAdmin):
    """Stored API answers for `Idempotency-Key`: internal, superusers only."""

    superuser_only = True
    list_display = ("id", "user", "key", "status_code", "run", "created_at")
    list_select_related = ("user", "run")
    search_fields = ("key", "user__username")
    show_full_result_count = False
