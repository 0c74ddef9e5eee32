"""Per-user throttle of re-trigger requests at `RETRIGGER_THROTTLE_RATE`."""

from django.conf import settings
from rest_framework.throttling import UserRateThrottle


class RetriggerRateThrottle(UserRateThrottle):
    scope = "retrigger"

    def get_rate(self) -> str | None:
        # Read per request (DRF builds a throttle per request), so override_settings
        # and a changed environment take effect without a restart.
        return settings.RETRIGGER_THROTTLE_RATE
