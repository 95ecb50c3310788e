"""The ``litejobs`` command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence

from litejobs._errors import LiteJobsError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litejobs",
        description="A fenced SQLite job queue, and the tools that prove it correct.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="measure the queue against raw apsw statements",
        description=(
            "Send, receive and delete N small messages through four paths (goqite's "
            "statements raw, litejobs' statements raw, the Queue one message at a time, "
            "and the Queue in batches), interleaved over several rounds on fresh files; "
            "print the median msg/s of each path and their ratios."
        ),
    )
    bench.add_argument("--messages", type=_positive, default=2000, help="per path and round")
    bench.add_argument("--batch", type=_positive, default=16, help="messages per batch call")
    bench.add_argument("--rounds", type=_positive, default=5, help="median over this many")
    bench.add_argument(
        "--synchronous", choices=["OFF", "NORMAL", "FULL", "EXTRA"], default="NORMAL"
    )
    bench.add_argument("--dir", default=None, help="where the temporary files go")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead")

    load = commands.add_parser(
        "load",
        help="run a scaled load scenario and check it",
        description=(
            "Run parents x children jobs through a WorkerPool on a fresh database file, "
            "check the database (no BusyError surfaced, every message deleted, hierarchy "
            "intact, parents terminal, workers staggered, throughput), print a summary and "
            "write results.json, report.md and plots. Exit status 1 if any criterion failed."
        ),
    )
    load.add_argument(
        "--scenario",
        default="light",
        choices=["light", "medium", "heavy", "custom", "all"],
        help="light 5x20, medium 10x50, heavy 15x100; all runs the three",
    )
    load.add_argument(
        "--workers",
        type=_workers,
        default=[2],
        help="worker count, or several as 2,8 (each is a run)",
    )
    load.add_argument("--parents", type=_positive, help="custom: parents")
    load.add_argument("--children", type=_positive, help="custom: children per parent")
    load.add_argument(
        "--stagger",
        type=float,
        help="seconds between worker starts (default: poll interval / workers)",
    )
    load.add_argument("--poll-interval", type=float, default=1.0)
    load.add_argument("--workload", choices=["synthetic", "crawl"], default="synthetic")
    load.add_argument(
        "--work", type=float, default=0.005, dest="work_s", help="seconds each synthetic job takes"
    )
    load.add_argument("--fan-out", type=int, default=3, help="crawl: links per page")
    load.add_argument("--depth", type=int, default=3, help="crawl: site depth")
    load.add_argument("--max-depth", type=int, default=3, help="crawl: how deep to follow")
    load.add_argument("--latency", type=float, default=0.0, help="crawl: server latency, s")
    load.add_argument("--error-rate", type=float, default=0.0, help="crawl: failing pages")
    load.add_argument("--timeout", type=float, default=600.0, help="bound for all parents")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--out", default="load-results", help="where reports go")
    load.add_argument(
        "--summary", default=None, help="also write one markdown page comparing every run here"
    )
    selfcheck = commands.add_parser(
        "selfcheck",
        help="prove the properties catch every seeded bug",
        description=(
            "Run the state machines against each seeded bug (mutant) of litejobs under a "
            "Hypothesis profile; print, per mutant, whether it was caught, by which machine, "
            "the examples and seconds to the first failure, and the rule steps and scheduling "
            "decisions of the shrunk failing example. Exit status 1 if any mutant escaped."
        ),
    )
    selfcheck.add_argument("--mutants", default=None, help="comma-separated names (default all)")
    selfcheck.add_argument(
        "--profile", default="ci", choices=["dev", "ci", "nightly"], help="Hypothesis profile"
    )
    selfcheck.add_argument("--json", action="store_true", help="print a JSON list instead")
    selfcheck.add_argument("--quiet", action="store_true", help="no progress on stderr")

    fuzz = commands.add_parser(
        "fuzz",
        help="fuzz the machines for a time budget, saving failures for pytest",
        description=(
            "Feed Hypothesis's fuzz_one_input fresh random bytes for each machine in turn, in "
            "--jobs processes, until the budget ends or Ctrl-C. Every failure is saved to the "
            "example database, where the next pytest run pointed at it replays and shrinks "
            "it. Prints a summary; exit status 1 if anything failed, 0 otherwise."
        ),
    )
    fuzz.add_argument("--budget", default="60s", help="30s, 20m, 8h or seconds (default 60s)")
    fuzz.add_argument("--jobs", type=_positive, default=1, help="worker processes (default 1)")
    fuzz.add_argument(
        "--database",
        default=None,
        help="a directory or redis://host:port/db (default: pytest's .hypothesis/examples)",
    )
    _machine_options(fuzz)
    fuzz.add_argument(
        "--profile",
        default=None,
        choices=["dev", "ci", "nightly"],
        help="Hypothesis profile (default: LITEJOBS_PROFILE, else ci under CI, else dev)",
    )
    fuzz.add_argument(
        "--mutant", default=None, help="fuzz a seeded bug (litejobs.testing.MUTANTS) instead"
    )
    fuzz.add_argument("--seed", type=int, default=None, help="for the random inputs")
    fuzz.add_argument(
        "-x", "--exitfirst", action="store_true", help="stop at the first failure found"
    )
    fuzz.add_argument("--report", default=None, help="write summary.md and summary.json here")
    fuzz.add_argument("--json", action="store_true", help="print the JSON summary instead")

    fuzz_bench = commands.add_parser(
        "fuzz-bench",
        help="measure the fuzz loop's examples/s against plain pytest's",
        description=(
            "For each machine: run its TestCase as pytest does under the profile, then the "
            "fuzz loop for the same time in the same process; repeat for several rounds and "
            "print the median examples/s of each and their ratio."
        ),
    )
    _machine_options(fuzz_bench)
    fuzz_bench.add_argument("--profile", default="ci", choices=["dev", "ci", "nightly"])
    fuzz_bench.add_argument("--rounds", type=_positive, default=3)
    fuzz_bench.add_argument(
        "--seconds", type=float, default=20.0, help="each side, per machine and round"
    )
    fuzz_bench.add_argument("--json", action="store_true", help="print a JSON list instead")
    _chaos_parser(commands)
    return parser


def _chaos_parser(commands: argparse._SubParsersAction) -> None:
    chaos = commands.add_parser(
        "chaos",
        help="kill worker processes at any instant, or storm one file's lock",
        description="Reliability harnesses on real processes; see docs/reliability.md.",
    )
    kinds = chaos.add_subparsers(dest="chaos", required=True, metavar="HARNESS")
    kill = kinds.add_parser(
        "kill",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="SIGKILL worker processes at chosen and random instants, then check the file",
        description=(
            "Each trial seeds a job tree on a fresh file, runs worker processes on it, "
            "SIGKILLs them at planned points (right after a receive, as a handler starts, "
            "after its effect, inside a spawn batch, before a message delete, before a "
            "COMMIT, inside a write to the file or its log, as an fsync begins) and at "
            "random instants, pauses some past their leases (holding a job or a plain "
            "message), cancels a parent, restarts them, and checks the finished file: nothing "
            "lost, no double effect (no result written twice or under a stale receipt, no "
            "message deleted under one), nothing stuck, retries and roll-ups "
            "right, integrity_check ok. Prints a table; exit status 1 if any trial failed."
        ),
    )
    kill.add_argument("--trials", type=_positive, default=20, help="trials, each on a fresh file")
    kill.add_argument("--seed", type=int, default=0, help="trial i uses seed + i")
    kill.add_argument("--kills", type=int, default=4, help="kills planned per trial")
    kill.add_argument("--processes", type=_positive, default=2, help="worker processes")
    kill.add_argument("--workers", type=_positive, default=2, help="workers per process")
    kill.add_argument("--parents", type=_positive, default=2, help="parents in each tree")
    kill.add_argument("--children", type=_positive, default=8, help="per parent")
    kill.add_argument("--fan-out", type=int, default=3, help="jobs each child spawns")
    kill.add_argument("--deadline", type=float, default=120.0, help="seconds per trial")
    kill.add_argument(
        "--no-cancel",
        action="store_true",
        help="never cancel a parent (without it, each trial cancels its last one)",
    )
    kill.add_argument("--mutant", default=None, help="run a seeded bug (test extra)")
    kill.add_argument("--dir", default=None, help="keep the trials' files here")
    kill.add_argument("--json", action="store_true", help="print JSON instead")
    kill.add_argument("--quiet", action="store_true", help="no line per trial on stderr")

    storm = kinds.add_parser(
        "storm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="many processes' workers on one file at once: no BusyError, no starvation",
        description=(
            "Start --processes worker processes of --workers workers together on one file "
            "holding --jobs jobs whose handlers do nothing, once per busy timeout given, "
            "with the default retry policy; report jobs/s, retries, the attempts each "
            "operation needed, surfaced BusyErrors and how evenly the workers shared the "
            "jobs. Exit status 1 if a BusyError surfaced, a worker starved or the file is wrong."
        ),
    )
    storm.add_argument("--processes", type=_positive, default=8, help="worker processes")
    storm.add_argument("--workers", type=_positive, default=2, help="per process")
    storm.add_argument("--jobs", type=_positive, default=8000, help="about this many, in 8 parents")
    storm.add_argument(
        "--busy-timeout",
        type=_seconds_list,
        default=[5.0, 0.01],
        help="seconds, or several as 5,0.01, one storm each",
    )
    storm.add_argument(
        "--seed", type=int, default=0, help="seeds the jitter of back-off and busy retries"
    )
    storm.add_argument("--json", action="store_true", help="print JSON instead")


def _seconds_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or S,T,..., got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return values


def _machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--machines", default=None, help="comma-separated: queue,hierarchy,interleaving (all)"
    )
    parser.add_argument("--chooser", default="hypothesis", choices=["hypothesis", "pct"])


def _workers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M,..., got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return values


def _bench(args: argparse.Namespace) -> int:
    from litejobs._bench import format_result, run_bench

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_bench(
        messages=args.messages,
        batch=args.batch,
        rounds=args.rounds,
        synchronous=args.synchronous,
        directory=args.dir,
        progress=progress,
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_result(result))
    return 0


class _Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per
    quarter elsewhere (CI logs)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.quarter = -1

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        fraction = min(done / total, 1.0) if total else 1.0
        bar = "#" * round(fraction * 30)
        line = f"{self.label} [{bar:<30}] {done}/{total} jobs {elapsed:6.1f}s"
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif int(fraction * 4) > self.quarter:
            self.quarter = int(fraction * 4)
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _load(args: argparse.Namespace) -> int:
    from pathlib import Path

    import attrs

    from litejobs._load import SCENARIOS, LoadConfig, run_load
    from litejobs._report import format_summary, summary_markdown, write_report

    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    fields = {f.name for f in attrs.fields(LoadConfig)} - {"scenario", "workers"}
    out = Path(args.out)
    runs = []
    for scenario in scenarios:
        for workers in args.workers:
            settings = {k: v for k, v in vars(args).items() if k in fields}
            if scenario != "custom":  # the named scenarios fix their sizes
                del settings["parents"], settings["children"]
            config = LoadConfig.for_scenario(scenario, workers=workers, **settings)
            progress = _Progress(f"{scenario} x{workers}")
            try:
                result = run_load(config, progress=progress)
            finally:
                progress.close()
            many = len(scenarios) > 1 or len(args.workers) > 1
            directory = out / f"{scenario}-{workers}w" if many else out
            files = write_report(result, directory)
            print(format_summary(result))
            print(f"report: {files.markdown}\n")
            runs.append((result, directory))
    if args.summary:
        page = Path(args.summary)
        page.parent.mkdir(parents=True, exist_ok=True)
        command = "python3 -m litejobs " + shlex.join(args.argv)
        page.write_text(summary_markdown(runs, page, command), encoding="utf-8")
        print(f"summary: {page}")
    return 0 if all(result.passed for result, _ in runs) else 1


def _selfcheck(args: argparse.Namespace) -> int:
    try:
        from litejobs.testing._selfcheck import format_results, selfcheck
    except ImportError as exc:  # Hypothesis comes with the test extra
        print(
            f"litejobs selfcheck needs the test extra ({exc.name} is missing): "
            "python3 -m pip install 'litejobs[test]'",
            file=sys.stderr,
        )
        return 2
    names = args.mutants.split(",") if args.mutants else None
    done: list[str] = []

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{len(done) + 1}] {message}", file=sys.stderr, flush=True)
        if "shrinking" in message:
            done.append(message)

    try:
        results = selfcheck(names, profile=args.profile, progress=progress)
    except KeyError as exc:
        print(f"litejobs selfcheck: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        print(format_results(results))
    return 0 if all(r.caught for r in results) else 1


def _fuzz(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    from litejobs._errors import ConfigError

    try:
        from litejobs.fuzz import (
            FuzzPlan,
            LiveDisplay,
            default_database,
            parse_budget,
            run_fuzz,
            write_report,
        )
        from litejobs.testing import default_profile
        from litejobs.testing._registry import MACHINES
    except ImportError as exc:  # Hypothesis comes with the test extra
        print(
            f"litejobs fuzz needs the test extra ({exc.name} is missing): "
            "python3 -m pip install 'litejobs[test]'",
            file=sys.stderr,
        )
        return 2
    display = LiveDisplay()
    try:
        plan = FuzzPlan(
            budget_s=parse_budget(args.budget),
            database=args.database or default_database(),
            jobs=args.jobs,
            machines=tuple(args.machines.split(",")) if args.machines else MACHINES,
            chooser=args.chooser,
            profile=args.profile or default_profile(),
            mutant=args.mutant,
            seed=random.randrange(2**32) if args.seed is None else args.seed,
            exitfirst=args.exitfirst,
        )
        summary = run_fuzz(plan, on_progress=display, started=args.started)
    except ConfigError as exc:  # a usage error, not a failure found
        print(f"litejobs fuzz: {exc}", file=sys.stderr)
        return 2
    finally:
        display.close()
    if args.report:
        markdown, data = write_report(summary, Path(args.report))
        print(f"report: {markdown}, {data}", file=sys.stderr)
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.to_markdown())
    return 1 if summary.failed else 0


def _fuzz_bench(args: argparse.Namespace) -> int:
    from litejobs.fuzz._bench import bench_fuzz, format_bench
    from litejobs.testing._registry import MACHINES

    rows = bench_fuzz(
        args.machines.split(",") if args.machines else MACHINES,
        profile=args.profile,
        rounds=args.rounds,
        seconds=args.seconds,
        chooser=args.chooser,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        print(format_bench(rows, profile=args.profile))
    return 0


def _chaos(args: argparse.Namespace) -> int:
    return _chaos_storm(args) if args.chaos == "storm" else _chaos_kill(args)


def _chaos_storm(args: argparse.Namespace) -> int:
    from litejobs import chaos

    # 8 parents, each child spawning one more: jobs = 8 * children * 2.
    shape = chaos.TreeShape(
        parents=8, children=max(1, args.jobs // 16), fan_out=1, work_s=0, fail_every=0, plain=0
    )
    results = []
    for busy_timeout in args.busy_timeout:
        config = chaos.StormConfig(
            processes=args.processes,
            workers=args.workers,
            shape=shape,
            busy_timeout=busy_timeout,
            seed=args.seed,
        )
        print(f"storm: busy_timeout {busy_timeout:g} s ...", file=sys.stderr, flush=True)
        results.append(chaos.run_storm(config))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print(chaos.format_storm(results))
    return 0 if all(r.ok for r in results) else 1


def _chaos_kill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from litejobs import chaos

    config = chaos.KillConfig(
        trials=args.trials,
        seed=args.seed,
        processes=args.processes,
        workers=args.workers,
        kills=args.kills,
        shape=chaos.TreeShape(parents=args.parents, children=args.children, fan_out=args.fan_out),
        deadline_s=args.deadline,
        mutant=args.mutant,
        cancel=not args.no_cancel,
    )

    def progress(t: chaos.TrialResult) -> None:
        if not args.quiet:
            kills = ", ".join(t.killed) or "no kill"
            verdict = "ok" if t.ok else "FAILED"
            cancel = ", a parent cancelled" if t.cancelled else ""
            print(
                f"[{t.trial + 1}/{config.trials}] seed {t.seed}: {verdict}, "
                f"{len(t.killed)} kills ({kills}){cancel}, {t.wall_s:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    report = chaos.run_kill(config, Path(args.dir) if args.dir else None, progress=progress)
    print(json.dumps(report.to_json(), indent=2) if args.json else chaos.format_kill(report))
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``litejobs`` command; return its exit status."""
    started = time.monotonic()  # a fuzz budget counts from here
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.started = started
    args.argv = argv
    try:
        commands = {
            "bench": _bench,
            "load": _load,
            "selfcheck": _selfcheck,
            "fuzz": _fuzz,
            "fuzz-bench": _fuzz_bench,
            "chaos": _chaos,
        }
        return commands[args.command](args)
    except (LiteJobsError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        # trio wraps what crosses a nursery in exception groups: look inside.
        interrupted, error = _reason(exc)
        if interrupted:
            print(f"litejobs {args.command}: interrupted", file=sys.stderr)
            return 130
        if error is None:
            raise
        print(f"litejobs {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _reason(exc: BaseException) -> tuple[bool, LiteJobsError | None]:
    """Whether ``exc`` is, or holds, a KeyboardInterrupt; else the
    LiteJobsError it is or holds, if any."""
    if isinstance(exc, BaseExceptionGroup):
        if exc.subgroup(KeyboardInterrupt) is not None:
            return True, None
        found: BaseException | None = exc.subgroup(LiteJobsError)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        return False, found if isinstance(found, LiteJobsError) else None
    if isinstance(exc, KeyboardInterrupt):
        return True, None
    return False, exc if isinstance(exc, LiteJobsError) else None


if __name__ == "__main__":
    sys.exit(main())
