"""The interleaving machine: real WorkerPool workers on a real file, their
order drawn by Hypothesis through the scheduler."""

from litejobs.testing import interleaving_machine

TestLitejobsInterleaving = interleaving_machine().TestCase
