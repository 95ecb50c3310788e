"""What a fuzz run is asked to do, checked before any process starts."""

from __future__ import annotations

import attrs

from litejobs._errors import ConfigError
from litejobs.testing._profiles import PROFILES
from litejobs.testing._registry import CHOOSERS, MACHINES


@attrs.frozen
class FuzzPlan:
    """A fuzz run. ``database`` is a directory or a ``redis://`` address;
    ``mutant`` names a seeded bug from :data:`litejobs.testing.MUTANTS` to
    run against instead of the correct code; ``seed`` fixes the random
    inputs, so a run on one machine repeats. ``exitfirst`` ends the run at
    the first failure instead of spending the rest of the budget."""

    budget_s: float
    database: str
    jobs: int = 1
    machines: tuple[str, ...] = MACHINES
    chooser: str = "hypothesis"
    profile: str = "dev"
    mutant: str | None = None
    seed: int = 0
    exitfirst: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first thing wrong."""
        from litejobs.testing._mutants import MUTANTS

        if not self.budget_s > 0:
            raise ConfigError(f"budget must be positive, got {self.budget_s!r} s")
        if self.jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {self.jobs}")
        unknown = [name for name in self.machines if name not in MACHINES]
        if unknown or not self.machines:
            raise ConfigError(
                f"unknown machine {', '.join(unknown) or '(none given)'}; "
                f"the machines are {', '.join(MACHINES)}"
            )
        if self.chooser not in CHOOSERS:
            raise ConfigError(f"chooser must be one of {', '.join(CHOOSERS)}, got {self.chooser!r}")
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.mutant is not None and self.mutant not in MUTANTS:
            known = ", ".join(MUTANTS)
            raise ConfigError(f"unknown mutant {self.mutant!r}; the mutants are {known}")
