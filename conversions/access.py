"""Who may act where: account admins act only inside the accounts they administer."""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from conversions.models import AccountMembership


class AccountForbidden(Exception):
    """The actor named accounts they do not administer."""

    def __init__(self, account_ids: list[int]):
        self.account_ids = account_ids
        super().__init__(f"Not an admin of account(s) {', '.join(map(str, account_ids))}.")


@dataclass(frozen=True)
class Actor:
    """The person (or the command line) a run acts for.

    `admin_account_ids` is None for superusers and the command line: every account.
    """

    user: AbstractBaseUser | None
    label: str
    admin_account_ids: frozenset[int] | None

    @property
    def is_unrestricted(self) -> bool:
        return self.admin_account_ids is None

    def may_act_in(self, account_id: int) -> bool:
        return self.admin_account_ids is None or account_id in self.admin_account_ids


COMMAND_LINE_ACTOR = Actor(user=None, label="command line", admin_account_ids=None)


def admin_account_ids(user: AbstractBaseUser | AnonymousUser | None) -> frozenset[int] | None:
    """The accounts `user` administers; None means every account (superuser)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    if user.is_superuser:
        return None
    return frozenset(
        AccountMembership.objects.filter(user=user, role=AccountMembership.Role.ADMIN).values_list(
            "account_id", flat=True
        )
    )


def is_account_admin(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    ids = admin_account_ids(user)
    return ids is None or bool(ids)


def actor_for_user(user: AbstractBaseUser) -> Actor:
    return Actor(user=user, label=user.get_username(), admin_account_ids=admin_account_ids(user))
