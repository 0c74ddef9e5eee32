"""The same JSON text under `text/json` and `text/plain`."""

from rest_framework.renderers import JSONRenderer


class TextJSONRenderer(JSONRenderer):
    media_type = "text/json"


class PlainTextJSONRenderer(JSONRenderer):
    media_type = "text/plain"
    format = "txt"
