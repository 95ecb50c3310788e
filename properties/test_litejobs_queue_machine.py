"""The sequential queue machine against litejobs' Queue on a real file."""

from litejobs import Database, Queue
from litejobs.testing import queue_machine

TestLitejobsQueue = queue_machine(
    lambda path, clock: Queue(Database.open(path, clock=clock), "machine")
).TestCase
