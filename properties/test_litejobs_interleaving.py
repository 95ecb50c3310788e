"""The interleaving machine: real WorkerPool workers on a real file, their
order drawn by Hypothesis through the scheduler, one draw per decision and,
for the long runs it is made for, with PCT priorities."""

import pytest

from litejobs.testing import interleaving_machine

TestLitejobsInterleaving = interleaving_machine().TestCase
TestLitejobsInterleavingPCT = interleaving_machine(chooser="pct").TestCase

# Three times the rules per example: races that need more setup. Too slow for
# the ci profile, which leaves it out; dev and nightly run it. It shares the
# PCT machine's saved failures, which replay within either length.
TestLitejobsInterleavingPCTLong = pytest.mark.litejobs_slow(
    interleaving_machine(chooser="pct", steps=60).TestCase
)
