"""Who may call the re-trigger endpoint at all."""

from rest_framework.permissions import BasePermission

from conversions.access import is_account_admin


class IsAccountAdmin(BasePermission):
    """Superusers and admins of at least one account; the 403 after the 401."""

    message = "Only account admins may re-trigger postbacks."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated) and is_account_admin(
            request.user
        )
