"""What a load run measured: the value types a run produces and the report
reads, and the statistics behind them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class Sample:
    """One point of a run's time series, taken by the sampler."""

    t: float  # seconds since the run started
    completed: int  # children terminal so far
    queue_depth: int  # the queue's messages: visible + delayed + in flight


@attrs.frozen
class LoadResult:
    """Everything one load run produced.

    ``criteria`` maps each pass/fail criterion's name to whether it held;
    ``metrics`` holds the figures (see docs/load-test-results.md for each).
    """

    scenario: str
    started_at: str  # ISO 8601, UTC
    config: dict[str, Any]
    criteria: dict[str, bool]
    metrics: dict[str, Any]
    samples: tuple[Sample, ...]
    completion_times_s: tuple[float, ...]

    @property
    def passed(self) -> bool:
        return all(self.criteria.values())

    def as_json(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        return {
            "scenario": self.scenario,
            "started_at": self.started_at,
            "passed": self.passed,
            "config": self.config,
            "criteria": self.criteria,
            "metrics": _json_safe(self.metrics),
            "samples": [attrs.asdict(s) for s in self.samples],
            "completion_times_s": list(self.completion_times_s),
        }


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: an undefined figure becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
