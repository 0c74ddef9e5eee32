"""JSON bodies under every media type the contract accepts; an empty body is `{}`."""

import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from conversions.api.errors import PayloadTooLarge


def is_json_media_type(content_type: str) -> bool:
    """`application/json`, `text/json` or `application/<anything>+json`, any parameters."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in ("application/json", "text/json"):
        return True
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and subtype.endswith("+json") and len(subtype) > len("+json")


class JSONObjectParser(BaseParser):
    """Decodes UTF-8 JSON, refusing NaN/Infinity and bodies over the upload limit.

    DRF's own media-type matching has no `+json` suffix wildcard, so the content
    negotiation asks `accepts()` instead of comparing `media_type`.
    """

    media_type = "application/json"

    @staticmethod
    def accepts(content_type: str) -> bool:
        return is_json_media_type(content_type)

    def parse(self, stream, media_type=None, parser_context=None):
        # Read one byte past the limit: enough to know it is too large, never more.
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(cap + 1 if cap is not None else -1) if stream is not None else b""
        if cap is not None and len(raw) > cap:
            raise PayloadTooLarge()
        if not raw.strip():
            return {}
        try:
            return json.loads(
                raw.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int
            )
        except UnicodeDecodeError as exc:
            raise ParseError("Malformed JSON: the body is not valid UTF-8.") from exc
        except RecursionError as exc:
            raise ParseError("Malformed JSON: nested too deeply.") from exc
        except ValueError as exc:
            # json's messages name a position, never a value: safe to show.
            raise ParseError(f"Malformed JSON: {exc}") from exc


# Any integer this long is far outside int64; past Python's own digit limit int() would
# raise a message about interpreter settings instead of a range error naming the key.
_MAX_INT_DIGITS = 40
_OUT_OF_RANGE = 10**_MAX_INT_DIGITS


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS:
        return -_OUT_OF_RANGE if text.startswith("-") else _OUT_OF_RANGE
    return int(text)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
