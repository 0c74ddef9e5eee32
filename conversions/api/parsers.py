"""JSON bodies under every media type the contract accepts; an empty body is `{}`."""

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


class JSONObjectParser(BaseParser):
    """`application/json`, `text/json` and `application/*+json`.

    DRF matches `media_type` with wildcards, so `application/*+json` is handled by
    `accepts_media_type` below rather than by the plain attribute.
    """

    media_type = "application/json"
    extra_media_types = ("text/json",)

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
