"""The same JSON text under `text/json` and `text/plain`."""

from rest_framework.renderers import JSONRenderer


class TextJSONRenderer(JSONRenderer):
    media_type = "text/json"
    # text/* defaults to US-ASCII without a charset; the JSON is UTF-8.
    charset = "utf-8"


class PlainTextJSONRenderer(JSONRenderer):
    media_type = "text/plain"
    charset = "utf-8"
    # Every renderer keeps format "json": the Accept header chooses, and a second format
    # would make the schema advertise a `?format=` parameter the API refuses.
