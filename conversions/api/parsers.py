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
    """Decodes UTF-8 JSON, refusing NaN/Infinity, duplicate keys, text that is not valid
    Unicode and bodies over the upload limit.

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
            data = json.loads(
                raw.decode("utf-8"),
                object_pairs_hook=_unique_keys,
                parse_constant=_reject_constant,
                parse_int=_parse_int,
            )
        except UnicodeDecodeError as exc:
            raise ParseError("Malformed JSON: the body is not valid UTF-8.") from exc
        except RecursionError as exc:
            raise ParseError("Malformed JSON: nested too deeply.") from exc
        except ValueError as exc:
            # json's messages name a position, never a value, and ours quote a key in
            # ASCII (see `_unique_keys`): safe to show.
            raise ParseError(f"Malformed JSON: {exc}") from exc
        _reject_lone_surrogates(data)
        return data


# Any integer this long is far outside int64; past Python's own digit limit int() would
# raise a message about interpreter settings instead of a range error naming the key.
_MAX_INT_DIGITS = 40
_OUT_OF_RANGE = 10**_MAX_INT_DIGITS


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS:
        return -_OUT_OF_RANGE if text.startswith("-") else _OUT_OF_RANGE
    return int(text)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object whose keys are all different.

    json keeps the last of repeated keys, so `{"affiliateId": [5], "affiliateId": null}`
    would quietly drop a filter and widen the selection; which one the client meant is
    unknowable, so the body is refused. The key is quoted by `json.dumps`, which escapes
    everything outside ASCII: the message stays printable whatever the key holds.
    """
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {json.dumps(key)}; give each key once.")
        obj[key] = value
    return obj


def _reject_lone_surrogates(data: object) -> None:
    """Refuse any key or string, at any depth, that UTF-8 cannot encode.

    A `\\ud800` escape without its pair decodes to a lone surrogate: not Unicode text, so
    no column, log or answer can hold it (echoing such a key in the 400 would crash the
    renderer). Walked with a stack, not recursion: json nests deeper than Python recurses.
    """
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ParseError(
                    "Malformed JSON: text that is not valid Unicode "
                    "(an unpaired UTF-16 surrogate escape such as \\ud800)."
                ) from exc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
