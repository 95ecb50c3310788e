"""Hypothesis profiles for every test run; see docs/testing.md.

The profile is chosen explicitly: ``LITEJOBS_PROFILE`` if set, else ``ci``
when the ``CI`` environment variable is set, else ``dev``; Hypothesis's
``--hypothesis-profile`` option overrides it.
"""

from hypothesis import settings

from litejobs.testing import default_profile, register_profiles

register_profiles()
settings.load_profile(default_profile())
