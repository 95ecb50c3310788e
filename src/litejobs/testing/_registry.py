"""The machines by name, for the tools that pick them from a command line.

Each build returns a class with the same name, and so the same example
database key, as the class the property suite runs: a failure saved by
``litejobs fuzz`` or ``selfcheck`` replays in ``pytest``.
"""

from __future__ import annotations

from hypothesis.stateful import RuleBasedStateMachine

#: The machines, cheapest first.
MACHINES = ("queue", "hierarchy", "interleaving")
CHOOSERS = ("hypothesis", "pct")


def build_machine(name: str, *, chooser: str = "hypothesis") -> type[RuleBasedStateMachine]:
    """The machine called ``name``; ``chooser`` only matters to the
    interleaving machine. Raises ``KeyError`` naming the known machines."""
    from litejobs._machines import hierarchy_machine, litejobs_queue, queue_machine
    from litejobs.testing._interleaving import interleaving_machine

    if name == "queue":
        return queue_machine(litejobs_queue)
    if name == "hierarchy":
        return hierarchy_machine()
    if name == "interleaving":
        return interleaving_machine(chooser=chooser)
    raise KeyError(f"unknown machine {name!r}; the machines are {', '.join(MACHINES)}")


def rule_names(machine: type[RuleBasedStateMachine]) -> set[str]:
    """The names of ``machine``'s rules, so a fuzz run can say which it
    never reached."""
    from hypothesis.stateful import RULE_MARKER

    return {
        name
        for cls in machine.__mro__
        for name, value in vars(cls).items()
        if getattr(value, RULE_MARKER, None) is not None
    }
