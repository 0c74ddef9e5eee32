"""Read side: which conversions a criteria selects for an actor.

A restricted actor (an account admin) only ever sees their own accounts, whatever the
criteria say; naming another account is refused earlier by `check_account_scope`.
"""

from django.db.models import QuerySet

from conversions.access import AccountForbidden, Actor
from conversions.criteria import Criteria
from conversions.models import Conversion


def conversion_list(*, criteria: Criteria, actor: Actor) -> QuerySet[Conversion]:
    """Every match, ordered (with the `id` tie-breaker), not sliced: `matched` counts it."""
    queryset = Conversion.objects.all()
    if actor.admin_account_ids is not None:
        queryset = queryset.filter(account_id__in=sorted(actor.admin_account_ids))
    return criteria.apply(queryset)


def conversion_selection(*, criteria: Criteria, actor: Actor) -> QuerySet[Conversion]:
    """The `offset`/`limit` window of `conversion_list`: what a run acts on."""
    queryset = conversion_list(criteria=criteria, actor=actor)
    return queryset[criteria.offset : criteria.offset + criteria.limit]


def check_account_scope(criteria: Criteria, actor: Actor) -> None:
    """Refuse `accountId` values the actor does not administer.

    Unrestricted actors pass: for them an unknown account simply matches nothing.
    """
    if criteria.account_ids is None or actor.admin_account_ids is None:
        return
    foreign = [pk for pk in criteria.account_ids if pk not in actor.admin_account_ids]
    if foreign:
        raise AccountForbidden(foreign)
