"""JSON payloads: the only format litejobs stores, so reading a queue never
executes anything."""

from __future__ import annotations

import json
import re
from typing import Any, overload

from litejobs._errors import InvalidPayloadError

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


#: The default limit on one encoded payload, body or result, in bytes of
#: UTF-8 JSON (``Database.open(max_payload_bytes=...)`` changes it).
MAX_PAYLOAD_BYTES = 1 << 20


def dumps(value: Any, what: str, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """Encode ``value`` as compact JSON of at most ``limit`` bytes.

    Raises:
        InvalidPayloadError: ``value`` holds something JSON cannot carry (a set,
            bytes, NaN, an object, a circular reference, nesting deeper than
            Python's recursion limit), text that is not valid Unicode (a lone
            surrogate), or encodes to more than ``limit`` bytes; ``what``
            names it. Nothing is written.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayloadError(f"{what} is not JSON-serialisable: {exc}") from None
    try:  # ASCII, the common case, is its own size and cannot hold a surrogate
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPayloadError(
            f"{what} is not valid UTF-8 text: {exc.reason} at character {exc.start}"
        ) from None
    if size > limit:
        raise InvalidPayloadError(
            f"{what} is {size} bytes of JSON, more than the limit of {limit} "
            "(Database.open(max_payload_bytes=...) sets it)"
        )
    return text


@overload
def stored_text(value: bytes, what: str) -> str: ...
@overload
def stored_text(value: None, what: str) -> None: ...
@overload
def stored_text(value: bytes | None, what: str) -> str | None: ...
def stored_text(value: bytes | None, what: str) -> str | None:
    """Decode a TEXT column read as its bytes (``CAST(... AS BLOB)``).

    The one place that turns stored bytes into text: something other than
    litejobs may have written bytes that are not UTF-8, and apsw would raise
    a raw UnicodeDecodeError decoding them itself.

    Raises:
        InvalidPayloadError: the bytes are not UTF-8; ``what`` names the column
            and its row.
    """
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadError(
            f"{what} holds text that is not valid UTF-8 (byte {exc.start})"
        ) from None


#: A ``\\uD800``-``\\uDFFF`` escape: the only way JSON text that is valid
#: UTF-8 can decode to a lone surrogate. :func:`dumps` never writes one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(text: str | bytes | None, what: str) -> Any:
    """Decode JSON written by :func:`dumps` (as text, or as its UTF-8 bytes);
    ``None`` stays ``None``.

    Raises:
        InvalidPayloadError: the bytes are not UTF-8, the text is not JSON, or
            it decodes to text that is not valid Unicode (``"\\ud800"``, which
            only something other than litejobs writes): what :func:`dumps`
            refuses is refused on the way back too, so no caller meets it.
    """
    if text is None:
        return None
    if isinstance(text, bytes):
        text = stored_text(text, what)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayloadError(f"{what} holds invalid JSON: {exc}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # rare: look closer
        try:
            _encoder.encode(value).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPayloadError(
                f"{what} holds text that is not valid Unicode: {exc.reason}"
            ) from None
    return value
