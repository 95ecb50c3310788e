"""Hypothesis profiles for every test run; see docs/testing.md.

The profile is chosen explicitly: ``LITEJOBS_PROFILE`` if set, else ``ci``
when the ``CI`` environment variable is set, else ``dev``.
"""

import os

from hypothesis import HealthCheck, settings

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
default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("LITEJOBS_PROFILE") or default)
