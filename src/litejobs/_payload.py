"""JSON payloads: the only format litejobs stores, so reading a queue never
executes anything."""

from __future__ import annotations

import json
from typing import Any

from litejobs._errors import InvalidPayloadError

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any, what: str) -> str:
    """Encode ``value`` as compact JSON.

    Raises:
        InvalidPayloadError: ``value`` holds something JSON cannot carry (a set,
            bytes, NaN, an object, a circular reference); ``what`` names it.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayloadError(f"{what} is not JSON-serialisable: {exc}") from None


def loads(text: str | None, what: str) -> Any:
    """Decode JSON written by :func:`dumps`; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidPayloadError(f"{what} holds invalid JSON: {exc}") from None
