"""The interleaving machine: real WorkerPool workers on a real file, their
order drawn by Hypothesis through the scheduler, one draw per decision and,
for the long runs it is made for, with PCT priorities."""

import pytest

from litejobs.testing import interleaving_machine

TestLitejobsInterleaving = interleaving_machine().TestCase
TestLitejobsInterleavingPCT = interleaving_machine(chooser="pct").TestCase

# Three times the rules per example: races that need more setup. Too slow for
# ci and dev, which leave it out; nightly and --litejobs-slow run it. Its saved
# failures have a key of their own: the 20-step machine would drop the ones
# it cannot reach.
TestLitejobsInterleavingPCTLong = pytest.mark.litejobs_slow(
    interleaving_machine(chooser="pct", steps=60).TestCase
)
