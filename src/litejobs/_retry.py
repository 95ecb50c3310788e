"""The retry policy around whole transactions, and the counters it feeds."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator

import attrs

from litejobs._errors import ConfigError


def _positive_int(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"RetryPolicy.{attribute.name} must be an int >= 1, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
        raise ConfigError(f"RetryPolicy.{attribute.name} must be finite and >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How often, and how patiently, a transaction that met ``SQLITE_BUSY`` is
    run again before :class:`~litejobs.BusyError` reaches the caller.

    Attempt ``k`` (from 2) waits ``initial_delay * factor ** (k - 2)`` seconds,
    scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so that colliding
    writers do not collide again. The defaults are the seed design's:
    5 attempts, 100 ms, doubling.
    """

    attempts: int = attrs.field(default=5, validator=_positive_int)
    initial_delay: float = attrs.field(default=0.1, validator=_non_negative)
    factor: float = attrs.field(default=2.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.jitter > 1:
            raise ConfigError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """Yield the waits before attempts 2, 3, ... ``attempts``."""
        delay = self.initial_delay
        for _ in range(self.attempts - 1):
            yield delay * (1 + rng.uniform(-self.jitter, self.jitter)) if self.jitter else delay
            delay *= self.factor


@attrs.frozen
class RetryMetrics:
    """A snapshot of what the retry policy did since the database was opened.

    ``attempts`` maps "attempts an operation needed" to how many operations
    needed that many; an operation that ran out of attempts counts under its
    final attempt and in ``busy_errors``.
    """

    operations: int
    retries: int
    busy_errors: int
    attempts: dict[int, int]


class RetryCounter:
    """Counters behind :class:`RetryMetrics`.

    Each thread counts into its own :class:`~collections.Counter`, so the
    common path (first attempt succeeds) takes no lock; :meth:`snapshot` sums
    them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._per_thread: list[Counter[int]] = []
        self._busy_errors: list[int] = []

    def _mine(self) -> Counter[int]:
        mine = getattr(self._local, "attempts", None)
        if mine is None:
            mine = self._local.attempts = Counter()
            with self._lock:
                self._per_thread.append(mine)
        return mine

    def record(self, attempts: int, *, gave_up: bool = False) -> None:
        """Count one operation that took ``attempts`` attempts."""
        self._mine()[attempts] += 1
        if gave_up:
            with self._lock:
                self._busy_errors.append(attempts)

    def snapshot(self) -> RetryMetrics:
        total: Counter[int] = Counter()
        with self._lock:
            for counts in self._per_thread:
                total.update(counts.copy())
            busy_errors = len(self._busy_errors)
        return RetryMetrics(
            operations=total.total(),
            retries=sum((n - 1) * count for n, count in total.items()),
            busy_errors=busy_errors,
            attempts=dict(sorted(total.items())),
        )
