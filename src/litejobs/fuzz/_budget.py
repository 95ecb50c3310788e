"""Budgets as people write them: ``30s``, ``20m``, ``8h`` or plain seconds."""

from __future__ import annotations

import math
import re

from litejobs._errors import ConfigError

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_BUDGET = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*")


def parse_budget(text: str) -> float:
    """Seconds in ``text``. Raises :class:`ConfigError` for anything else."""
    match = _BUDGET.fullmatch(text)
    seconds = float(match[1]) * _UNITS[match[2]] if match else math.nan
    if not seconds > 0:
        raise ConfigError(
            f"a budget is a positive number with s, m or h, like 30s or 8h; got {text!r}"
        )
    return seconds
