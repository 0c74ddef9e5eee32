"""Content negotiation that never refuses the response type and knows `+json` bodies."""

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.settings import api_settings


class _NoFormatOverride:
    """DRF settings with `URL_FORMAT_OVERRIDE` off: `?format=xml` would otherwise be a
    404 raised before authentication."""

    URL_FORMAT_OVERRIDE = None

    def __getattr__(self, name):
        return getattr(api_settings, name)


class JSONContentNegotiation(DefaultContentNegotiation):
    settings = _NoFormatOverride()

    def select_parser(self, request, parsers):
        content_type = request.content_type or ""
        if len(content_type) > self.max_media_type_length:
            return None
        for parser in parsers:
            accepts = getattr(parser, "accepts", None)
            if accepts is not None and accepts(content_type):
                return parser
        return super().select_parser(request, parsers)

    def select_renderer(self, request, renderers, format_suffix=None):
        """The Accept header picks among the JSON renderers; anything else gets JSON.

        Negotiation runs before authentication, so a 406 here would answer ahead of the
        401 the contract puts first; RFC 9110 allows ignoring an unsatisfiable Accept.
        """
        try:
            return super().select_renderer(request, renderers, None)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
