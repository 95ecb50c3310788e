"""The interleaving machine: real WorkerPool workers on a real file, their
order drawn by Hypothesis through the scheduler, one draw per decision and,
for the long runs it is made for, with PCT priorities."""

from litejobs.testing import interleaving_machine

TestLitejobsInterleaving = interleaving_machine().TestCase
TestLitejobsInterleavingPCT = interleaving_machine(chooser="pct").TestCase
