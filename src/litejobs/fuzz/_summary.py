"""The end of a fuzz run, as a table for people and JSON for tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from litejobs.fuzz._databases import redact
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._stats import MachineStats


@attrs.frozen
class FuzzSummary:
    """What a run did. ``elapsed_s`` is the whole run, process start-up
    included; ``examples_per_s`` divides by it, over all processes."""

    plan: FuzzPlan
    elapsed_s: float
    machines: dict[str, MachineStats]
    rules_total: dict[str, int]
    interrupted: bool = False
    #: Processes that could not start or died, with why.
    errors: tuple[str, ...] = ()
    #: Processes killed for running past the deadline's grace or a second
    #: Ctrl-C; their last counts stand.
    killed: int = 0

    @property
    def failures(self) -> int:
        return sum(stats.failures for stats in self.machines.values())

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.errors)

    def examples_per_s(self, name: str) -> float:
        return self.machines[name].examples / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        plan = attrs.asdict(self.plan)
        plan["machines"] = list(self.plan.machines)
        plan["database"] = redact(self.plan.database)
        return {
            "plan": plan,
            "elapsed_s": round(self.elapsed_s, 2),
            "interrupted": self.interrupted,
            "failures": self.failures,
            "errors": list(self.errors),
            "killed": self.killed,
            "machines": {
                name: {
                    "examples": stats.examples,
                    "failures": stats.failures,
                    "examples_per_s": round(self.examples_per_s(name), 2),
                    "gave_up": stats.gave_up,
                    "rules_covered": sorted(stats.rules),
                    "rules_total": self.rules_total.get(name, 0),
                    "events": dict(sorted(stats.events.items())),
                    "targets": dict(sorted(stats.targets.items())),
                    "failure_origins": dict(stats.origins),
                    "failure_messages": dict(stats.messages),
                }
                for name, stats in self.machines.items()
            },
        }

    def to_markdown(self) -> str:
        plan = self.plan
        status = "interrupted" if self.interrupted else "finished"
        if plan.exitfirst and self.failures and not self.interrupted:
            status = "stopped at the first failure"
        lines = [
            "# litejobs fuzz",
            "",
            f"{status} after {self.elapsed_s:.1f} s of a {plan.budget_s:g} s budget; "
            f"{plan.jobs} process(es), chooser `{plan.chooser}`, profile `{plan.profile}`, "
            f"seed {plan.seed}, database `{redact(plan.database)}`"
            + (f", mutant `{plan.mutant}`" if plan.mutant else "")
            + ".",
            "",
            "| machine | examples | failures | examples/s | gave up | rules | events |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, stats in self.machines.items():
            lines.append(
                f"| {name} | {stats.examples} | {stats.failures} | "
                f"{self.examples_per_s(name):.1f} | {stats.gave_up} | "
                f"{len(stats.rules)}/{self.rules_total.get(name, 0)} | {len(stats.events)} |"
            )
        for name, stats in self.machines.items():
            if stats.origins:
                lines += ["", f"## Failures in {name}", ""]
                for where, count in stats.origins.most_common():
                    text = stats.messages.get(where, "")
                    text = text[len(where) :].lstrip(": ") if text.startswith(where) else text
                    lines.append(f"- {count} x `{where}`: {text}")
        lines += ["", "## What the search reached", ""]
        for name, stats in self.machines.items():
            lines.append(f"**{name}** (examples that saw each event):")
            lines.append("")
            lines += [f"- {event}: {count}" for event, count in sorted(stats.events.items())]
            lines += [f"- highest {label}: {value:g}" for label, value in stats.targets.items()]
            missing = self.rules_total.get(name, 0) - len(stats.rules)
            if missing > 0:
                lines.append(f"- {missing} rule(s) never ran")
            lines.append("")
        if self.killed:
            lines += [f"{self.killed} process(es) killed at the end; their last counts stand.", ""]
        if self.errors:
            lines += ["## Processes that failed", ""] + [f"- {e}" for e in self.errors] + [""]
        if self.failures:
            lines += [
                "Every failure is saved in the example database; `pytest` pointed at it "
                "replays and shrinks it (see docs/fuzzing.md).",
                "",
            ]
        return "\n".join(lines).rstrip() + "\n"


def write_report(summary: FuzzSummary, directory: Path) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "summary.md"
    data = directory / "summary.json"
    markdown.write_text(summary.to_markdown(), encoding="utf-8")
    data.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return markdown, data
