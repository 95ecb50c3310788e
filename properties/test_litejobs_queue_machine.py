"""The sequential queue machine against litejobs' Queue on a real file."""

from litejobs._machines import litejobs_queue
from litejobs.testing import queue_machine

TestLitejobsQueue = queue_machine(litejobs_queue).TestCase
