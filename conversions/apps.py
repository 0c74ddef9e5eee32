from django.apps import AppConfig


class ConversionsConfig(AppConfig):
    name = "conversions"
    verbose_name = "Conversions and postbacks"

    def ready(self) -> None:
        from conversions.bulk import register_any_of
        from conversions.models import (
            Conversion,
            DeliveryAttempt,
            DeliveryClaim,
            RunItem,
        )

        # The id lists of a batch (hundreds of ids) on the delivery path.
        register_any_of(
            (Conversion, "id"),
            (RunItem, "conversion"),
            (DeliveryClaim, "conversion"),
            (DeliveryAttempt, "conversion"),
        )
