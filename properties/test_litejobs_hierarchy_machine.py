"""The hierarchy machine against litejobs' JobStore on a real file."""

from litejobs.testing import hierarchy_machine

TestLitejobsHierarchy = hierarchy_machine().TestCase
