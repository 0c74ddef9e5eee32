"""API error handling: DRF's usual shape, never a 500 with internals.

- 400s are `{key: [messages]}` (`non_field_errors` for the body as a whole), including
  malformed JSON, which DRF would otherwise answer as `{"detail": ...}`.
- 401/403/404/405/415/429 keep DRF's `{"detail": ...}`.
- Anything unexpected is logged with its traceback and answered with a generic 500.
"""

import logging

from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

logger = logging.getLogger(__name__)

NON_FIELD = "non_field_errors"


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def exception_handler(exc, context):
    if isinstance(exc, ParseError):
        set_rollback()
        return Response({NON_FIELD: [str(exc.detail)]}, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None:
        if response.status_code == status.HTTP_400_BAD_REQUEST and not isinstance(
            response.data, dict
        ):
            # A bare list of messages still gets a key, so clients read one shape.
            response.data = {NON_FIELD: response.data}
        return response
    view = context.get("view")
    logger.exception("Unhandled error in %s", type(view).__name__ if view else "API view")
    set_rollback()
    return Response(
        {"detail": "Internal server error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR
    )
