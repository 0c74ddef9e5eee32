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

A change list never selects more than its query string asks for (an action with "select
all" runs on that selection): a filter value it cannot apply, or a selected id that is no
id, is refused rather than dropped. See `ScopedChangeList` and `response_action`.
"""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
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


class ScopedChangeList(ChangeList):
    """Django's change list, minus the cases where it quietly widens the selection.

    Django ignores a search its form rejects (a NUL character), drops a related filter
    whose sidebar would show one choice after taking its parameter out of the query
    string (an admin of one account asking for `?account__id__exact=<another>`), and
    raises a plain ValueError for a date hierarchy year it cannot bound (9999). The first
    two would list, and let "select all" act on, every row in scope; here each is
    Django's invalid-lookup answer instead (a redirect to `?e=1`), as are values the
    database cannot take at all (a NUL, an integer past 64 bits on SQLite).
    """

    def __init__(self, request: HttpRequest, *args, **kwargs) -> None:
        search = self.search_form_class(request.GET)
        if not search.is_valid():
            raise IncorrectLookupParameters(search.errors.as_text())
        if any("\x00" in value for _, values in request.GET.lists() for value in values):
            # No stored value holds a NUL, and PostgreSQL refuses one with a DataError.
            raise IncorrectLookupParameters("NUL character in the query string")
        super().__init__(request, *args, **kwargs)

    def get_results(self, request: HttpRequest) -> None:
        try:
            super().get_results(request)
        except OverflowError as exc:
            # SQLite refuses an integer past 64 bits while binding it (nothing ran):
            # `?id__in=99999999999999999999999`.
            raise IncorrectLookupParameters(exc) from exc

    def get_filters(self, request: HttpRequest):
        try:
            specs, has_filters, remaining, duplicates, active = super().get_filters(request)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc
        applied = set(remaining).union(*(spec.expected_parameters() for spec in specs))
        if self.date_hierarchy:
            applied.update(f"{self.date_hierarchy}__{part}" for part in ("year", "month", "day"))
        dropped = sorted(set(self.get_filters_params()) - applied)
        if dropped:
            raise IncorrectLookupParameters(f"Filters that would not apply: {dropped}")
        return specs, has_filters, remaining, duplicates, active


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

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return ScopedChangeList

    def response_action(self, request: HttpRequest, queryset: QuerySet, **kwargs):
        # Django turns the ticked ids into `pk__in` as posted: a word raises ValueError,
        # an id past the column's range OverflowError (SQLite), both a 500. A browser
        # only posts ids it was shown, so anything else refuses the whole action.
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if not all(map(self._is_valid_pk, selected)):
            self.message_user(
                request, "The selection holds an invalid id; nothing was done.", messages.ERROR
            )
            return None  # Django redirects back to the change list.
        return super().response_action(request, queryset, **kwargs)

    def _is_valid_pk(self, value: str) -> bool:
        pk = self.model._meta.pk
        try:
            # The field's validators include the database's range for its column.
            pk.run_validators(pk.to_python(value))
        except ValidationError:
            return False
        return True

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
    tenant the names of another's affiliates, brands and accounts. Django also drops a
    related filter with a single choice (`has_output`) after taking its parameter; in
    use, this one always applies, so another account's id matches nothing.
    """

    def has_output(self) -> bool:
        return bool(self.used_parameters) or super().has_output()

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


class ChoiceListFilter(admin.SimpleListFilter):
    """A SimpleListFilter whose value must be one of its choices.

    Django hands any value to `queryset()`, where the usual fall-through returns the
    queryset unfiltered: `?last_outcome=bogus` would mean "all". Here an unknown value
    is an invalid lookup (Django's redirect to `?e=1`). Subclasses implement `filter`.
    """

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if value not in {str(choice) for choice, _ in self.lookup_choices}:
            raise IncorrectLookupParameters(f"Unknown {self.parameter_name}: {value!r}")
        return self.filter(queryset, value)

    def filter(self, queryset: QuerySet, value: str) -> QuerySet:
        raise NotImplementedError
