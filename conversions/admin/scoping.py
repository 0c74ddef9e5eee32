"""Tenant scoping for every ModelAdmin of the app.

Security decision: in this admin, `AccountMembership` is the single source of truth.
Django's model permissions (`auth.Permission`) are ignored for the app's models, so an
operator cannot grant a tenant's data by ticking a permission box:

- a superuser sees and edits everything (Django's usual superuser);
- an account admin (`AccountMembership.role == "admin"`, with `is_staff` so the admin
  site lets them in) sees, read-only, the objects of the accounts they administer, and
  may run the "Re-trigger postbacks" action on their conversions;
- everyone else (members, staff without an admin membership) sees nothing of the app.

Detail pages go through `get_queryset`, so another account's object is simply not found.
"""

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from conversions.access import admin_account_ids
from conversions.models import Account

_SCOPE_ATTR = "_conversions_admin_scope"
_UNSET = object()


def account_scope(request: HttpRequest) -> frozenset[int] | None:
    """The accounts the user administers; None = every account (superuser).

    Cached on the request: the admin asks for permissions dozens of times per page.
    """
    scope = getattr(request, _SCOPE_ATTR, _UNSET)
    if scope is _UNSET:
        scope = admin_account_ids(request.user)
        setattr(request, _SCOPE_ATTR, scope)
    return scope  # type: ignore[return-value]


def is_unrestricted(request: HttpRequest) -> bool:
    return account_scope(request) is None


def is_account_admin(request: HttpRequest) -> bool:
    scope = account_scope(request)
    return scope is None or bool(scope)


def scope_lookup(model: type[Model]) -> str | None:
    """How rows of a reference model reach their account (None: not account-owned)."""
    if model is Account:
        return "pk"
    if any(field.name == "account" for field in model._meta.fields):
        return "account_id"
    return None


class ScopedModelAdmin(admin.ModelAdmin):
    """Read-only for account admins, limited to their accounts; editable by superusers.

    `account_path` is the lookup from the model to its account id (None: shared rows such
    as conversion types). `superuser_only` hides internal bookkeeping from tenants.
    Deletion is off by default: most rows are referenced by the delivery history, which
    must survive (deactivate instead), and a cascade on a big account would load
    hundreds of thousands of objects into the delete confirmation page.
    """

    account_path: str | None = None
    superuser_only: bool = False
    editable: bool = False
    deletable: bool = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        scope = account_scope(request)
        if scope is None:
            return queryset
        if self.superuser_only or not scope:
            return queryset.none()
        return self.scope_queryset(request, queryset, scope)

    def scope_queryset(
        self, request: HttpRequest, queryset: QuerySet, scope: frozenset[int]
    ) -> QuerySet:
        if self.account_path is None:
            return queryset
        return queryset.filter(**{f"{self.account_path}__in": scope})

    def _may_view(self, request: HttpRequest) -> bool:
        if is_unrestricted(request):
            return True
        return not self.superuser_only and is_account_admin(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may_view(request)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._may_view(request)

    def has_add_permission(self, request: HttpRequest, *args) -> bool:
        return self.editable and is_unrestricted(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.editable and is_unrestricted(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.deletable and is_unrestricted(request)


class ScopedRelatedFilter(admin.RelatedFieldListFilter):
    """A related-object filter that offers only the viewer's accounts' objects.

    Django's own filter lists every row of the related table, which would show one
    tenant the names of another's affiliates, brands and accounts.
    """

    def field_choices(self, field, request: HttpRequest, model_admin) -> list[tuple]:
        related = field.related_model
        queryset = related._default_manager.all()
        scope = account_scope(request)
        lookup = scope_lookup(related)
        if scope is not None and lookup is not None:
            queryset = queryset.filter(**{f"{lookup}__in": scope})
        ordering = self.field_admin_ordering(field, request, model_admin) or ()
        if ordering:
            queryset = queryset.order_by(*ordering)
        return [(obj.pk, f"{obj} (#{obj.pk})") for obj in queryset]
