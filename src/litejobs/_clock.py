"""Time for litejobs: integer UTC milliseconds from an injectable clock.

The clock is the synchronous layer's seam for nondeterminism: reading the time
and sleeping between retries both go through it, so tests run on
:class:`VirtualClock` without real sleeps and replay exactly.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import attrs

from litejobs._errors import ConfigError


class Clock(Protocol):
    """What litejobs needs from a clock."""

    def now_ms(self) -> int:
        """Return the current time as integer milliseconds since the epoch, UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (used between retries)."""
        ...


class SystemClock:
    """The wall clock: ``time.time()`` in UTC milliseconds and ``time.sleep``."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@attrs.define
class VirtualClock:
    """A clock that moves only when told to.

    ``sleep`` advances the clock instead of blocking, so retry back-off is
    deterministic and instantaneous. For example::

        clock = VirtualClock(now=1_000)
        clock.advance(1.5)
        assert clock.now_ms() == 2_500
    """

    now: int = 1_700_000_000_000
    slept: list[float] = attrs.field(factory=list)

    def now_ms(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (rounded to the millisecond)."""
        self.now += to_ms(seconds, "seconds")


#: The longest duration litejobs accepts (about 31 years); it keeps every
#: timestamp well inside SQLite's 64-bit integers.
MAX_SECONDS = 1e9


def to_ms(seconds: float, name: str) -> int:
    """Convert a non-negative duration in seconds to whole milliseconds.

    Raises:
        ConfigError: ``seconds`` is negative, NaN, infinite, larger than
            :data:`MAX_SECONDS` or not a number; the message names the argument.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ConfigError(
            f"{name} must be a number of seconds from 0 to {MAX_SECONDS:.0e}, got {seconds!r}"
        )
    return round(seconds * 1000)
