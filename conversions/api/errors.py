"""API error handling: DRF's usual shape, never a 500 with internals."""

import logging

from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    return drf_exception_handler(exc, context)
