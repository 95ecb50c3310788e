"""The project's Hypothesis profiles, registered by name and chosen explicitly."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("dev", "ci", "nightly")


def register_profiles() -> None:
    """Register ``dev`` (quick, local), ``ci`` (bounded and derandomized, so a
    CI run is repeatable and fits its time limit) and ``nightly`` (large)."""
    settings.register_profile("dev", max_examples=50, deadline=None)
    settings.register_profile(
        "ci",
        max_examples=100,
        deadline=None,
        derandomize=True,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "nightly",
        max_examples=20_000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def default_profile() -> str:
    """``LITEJOBS_PROFILE`` if set, else ``ci`` when ``CI`` is set, else ``dev``."""
    return os.environ.get("LITEJOBS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
