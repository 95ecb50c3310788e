"""Kill trials: worker processes on one file, SIGKILLed at chosen and random
instants and restarted, then the file checked against what was handed in.

One trial::

    seed the tree ──> start P victim processes (2 workers each)
         │            each may carry a kill point (see litejobs.chaos._victim)
         │            or be killed by this process after a random delay
         ├──> a victim pauses: resume it once another worker holds its message
         ├──> the cancel instant comes: cancel the last parent
         ├──> a victim dies by SIGKILL: start a fresh one (next kill from the plan)
         ├──> every victim exits 0: the tree is finished
         └──> the deadline passes: kill them all (what is left counts as stuck)
    check the file: lost, double effects, stuck, roll-ups, integrity

A trial's plan comes from its seed (``seed + i`` for the i-th), so
``--seed S --trials 1`` plans trial S again; the random-instant kills and
the cancel land where the machine's speed puts them.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import select
import signal
import subprocess
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from litejobs._db import Database, rows
from litejobs._errors import BusyError, ConfigError, InvalidTransitionError
from litejobs._jobs import JobStore
from litejobs._queue import parse_receipt
from litejobs._retry import RetryPolicy
from litejobs.chaos._tree import TreeCheck, TreeShape, check_tree, seed_tree
from litejobs.chaos._victim import POINTS, VictimSpec

#: A kill point, or "random": this process kills the victim after a delay.
KILL_POINTS = ("random", *POINTS)
#: The occurrences a point's kill is drawn from. Small, so that it happens
#: before the tree is finished: a trial's processes see a few dozen claims
#: and commits, and only ``children`` spawns between them.
_AT = {
    "receive": 12,
    "handler": 12,
    "effect": 12,
    "pause": 12,
    "plain": 4,
    "batch": 3,
    "delete": 12,
    "commit": 40,
    "write": 400,
    "sync": 30,
}
#: A random kill's delay, from the victim's database open; the cancel's, from
#: the first victim's.
_RANDOM_S = (0.05, 1.2)
_CANCEL_S = (0.1, 1.5)
#: A paused victim is resumed at the latest after this many leases.
_PAUSE_LEASES = 3
#: How often a paused victim's job is looked at, in seconds.
_PAUSE_POLL_S = 0.005
#: A trial whose victims crash this often (exit with an error, not a kill)
#: stops: something is broken, and restarting it would only hide that.
MAX_CRASHES = 3


@attrs.frozen
class KillConfig:
    """The settings of a run of kill trials."""

    trials: int = 20
    seed: int = 0
    processes: int = 2
    workers: int = 2
    kills: int = 4  # per trial
    shape: TreeShape = attrs.field(factory=TreeShape)
    visibility_timeout: float = 1.0
    deadline_s: float = 120.0  # per trial
    mutant: str | None = None  # a seeded bug for the victims to run
    cancel: bool = True  # cancel the last parent at a seeded instant (2+ parents)
    checkpoint_pages: int = 16  # the victims' autocheckpoint, so kills land in checkpoints

    def __attrs_post_init__(self) -> None:
        for name in ("trials", "processes", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.kills < 0:
            raise ConfigError(f"kills must be >= 0, got {self.kills}")
        if self.checkpoint_pages < 1:
            raise ConfigError(f"checkpoint_pages must be at least 1, got {self.checkpoint_pages}")
        if not (self.deadline_s > 0 and self.visibility_timeout > 0):
            raise ConfigError(
                "deadline_s and visibility_timeout must be > 0, "
                f"got {self.deadline_s}, {self.visibility_timeout}"
            )


@attrs.frozen
class PlannedKill:
    """One kill of a trial's plan: where, and at which occurrence or delay."""

    point: str
    at: int = 1
    after_s: float = 0.0

    def describe(self) -> str:
        return (
            f"random@{self.after_s:.2f}s" if self.point == "random" else f"{self.point}#{self.at}"
        )


def plan_kills(seed: int, kills: int) -> list[PlannedKill]:
    """The kills of the trial with ``seed``, in the order victims get them."""
    rng = random.Random(seed)
    plan = []
    for _ in range(kills):
        point = rng.choice(KILL_POINTS)
        if point == "random":
            plan.append(PlannedKill(point, after_s=round(rng.uniform(*_RANDOM_S), 3)))
        else:
            plan.append(PlannedKill(point, at=rng.randint(1, _AT[point])))
    return plan


def cancel_after(seed: int) -> float:
    """When the trial with ``seed`` cancels its last parent: seconds after
    the first victim opened the database."""
    return round(random.Random(f"cancel {seed}").uniform(*_CANCEL_S), 3)


@attrs.frozen
class TrialResult:
    """One trial: what was planned, what happened, what the file said."""

    trial: int
    seed: int
    planned: tuple[PlannedKill, ...]
    killed: tuple[str, ...]  # the points of the kills that happened
    crashes: tuple[str, ...]  # victims that exited with an error: the last line of stderr
    cancelled: bool  # the last parent was cancelled (not already finished)
    timed_out: bool
    check: TreeCheck
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.check.ok and not self.crashes and not self.timed_out


@attrs.define
class _Slot:
    """One victim process, the kill it carries, and what it has said on its
    stdout: ``ready`` (its database is open), ``paused RECEIPT``."""

    proc: subprocess.Popen[bytes]
    kill: PlannedKill | None
    stderr: Path
    pidfd: int | None = None
    ready_at: float | None = None
    paused: tuple[str, float] | None = None  # the receipt it holds, and since when
    _partial: bytes = b""

    @property
    def point(self) -> str:
        """What the victim was planned to die (or pause) at, for the tally."""
        return self.kill.point if self.kill else "unplanned"

    @property
    def kill_at(self) -> float | None:
        if self.kill is None or self.kill.point != "random" or self.ready_at is None:
            return None
        return self.ready_at + self.kill.after_s

    @property
    def stdout(self) -> int | None:
        out = self.proc.stdout
        return None if out is None or out.closed else out.fileno()

    def read(self, now: float) -> None:
        """Take in whatever the victim has printed."""
        fd = self.stdout
        if fd is None or not select.select([fd], [], [], 0)[0]:
            return
        chunk = os.read(fd, 4096)
        if not chunk:  # the victim is gone
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            word, _, rest = line.decode().partition(" ")
            if word == "ready":
                self.ready_at = now
            elif word == "paused":
                self.paused = (rest, now)


def run_trial(
    config: KillConfig, trial: int, directory: Path, *, plan: list[PlannedKill] | None = None
) -> TrialResult:
    """Run trial ``trial`` (seed ``config.seed + trial``) in ``directory``,
    with the seed's kills unless ``plan`` is given."""
    seed = config.seed + trial
    plan = plan_kills(seed, config.kills) if plan is None else plan
    directory.mkdir(parents=True, exist_ok=True)
    path, log = directory / "chaos.db", directory / "runs.log"
    for stale in [*directory.glob("chaos.db*"), log, *directory.glob("victim-*.err")]:
        stale.unlink(missing_ok=True)  # a reused --dir: old rows would count
    began = time.monotonic()
    # The harness's own connection: it must not block on a paused victim's
    # lock, so it waits 0.2 s at most and says BusyError (see _run).
    db = Database.open(path, seed=seed, busy_timeout=0.2, retry=RetryPolicy(attempts=1))
    try:
        parents = seed_tree(db, config.shape)
        killed, crashes, cancelled, timed_out = _run(config, seed, plan, db, parents, directory)
    finally:
        db.close()
    check = check_tree(path, config.shape, parents, log, parents[-1:] if cancelled else ())
    return TrialResult(
        trial=trial,
        seed=seed,
        planned=tuple(plan),
        killed=tuple(killed),
        crashes=tuple(crashes),
        cancelled=cancelled,
        timed_out=timed_out,
        check=check,
        wall_s=time.monotonic() - began,
    )


def _run(
    config: KillConfig,
    seed: int,
    plan: list[PlannedKill],
    db: Database,
    parents: list[str],
    directory: Path,
) -> tuple[list[str], list[str], bool, bool]:
    """Run the victims until the tree is done, they crash too often or the
    deadline passes; return the kills that happened, the crashes, whether
    the cancel happened and whether the deadline passed."""
    spec = VictimSpec(
        db=str(db.path),
        log=str(directory / "runs.log"),
        shape=config.shape,
        workers=config.workers,
        visibility_timeout=config.visibility_timeout,
        mutant=config.mutant,
        checkpoint_pages=config.checkpoint_pages,
    )
    kills = deque(plan)
    killed: list[str] = []
    crashes: list[str] = []
    launched = 0
    # The cancel counts from the first victim's open; inf: none planned, or done.
    cancel_in = cancel_after(seed) if config.cancel and len(parents) > 1 else None
    cancel_at, cancelled = math.inf, False

    def launch() -> _Slot:
        nonlocal launched
        kill = kills.popleft() if kills else None
        launched += 1
        stderr = directory / f"victim-{launched}.err"
        victim = attrs.evolve(
            spec,
            seed=seed * 1000 + launched,
            die=kill.point if kill and kill.point != "random" else None,
            at=kill.at if kill else 1,
        )
        with stderr.open("wb") as err:
            # A process group of its own: a Ctrl-C at the terminal reaches
            # this process, which ends the trial, and not the victims.
            proc = subprocess.Popen(
                victim.to_argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                process_group=0,
            )
        return _Slot(proc, kill, stderr, _pidfd(proc.pid))

    slots = [launch() for _ in range(config.processes)]
    deadline = time.monotonic() + config.deadline_s
    timed_out = False
    try:
        while slots and len(crashes) < MAX_CRASHES:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            for slot in slots:
                slot.read(now)
                if cancel_in is not None and slot.ready_at is not None:
                    cancel_at, cancel_in = slot.ready_at + cancel_in, None
                if slot.paused is not None and _resume(slot, db, now, config):
                    killed.append(slot.point)
            # Not while a victim is paused: it may hold the write lock.
            if now >= cancel_at and not any(s.paused for s in slots):
                with contextlib.suppress(BusyError):  # locked: again on the next turn
                    cancelled, cancel_at = _cancel(db, parents[-1], config.mutant), math.inf
            for slot in list(slots):
                code = slot.proc.poll()
                if code is None:
                    if slot.kill_at is not None and now >= slot.kill_at:
                        slot.proc.kill()
                        slot.proc.wait()
                        code = slot.proc.returncode
                    else:
                        continue
                _close(slot)
                slots.remove(slot)
                if code == -signal.SIGKILL:
                    killed.append(slot.point)
                    slots.append(launch())
                elif code != 0:
                    crashes.append(_last_line(slot.stderr) or f"exit status {code}")
                    if len(crashes) < MAX_CRASHES:
                        slots.append(launch())
                # exit 0: the tree is finished, as far as that victim saw
            # A cancel put off (paused victim, lock) is tried again a poll later.
            wake = [deadline, max(cancel_at, now + _PAUSE_POLL_S)]
            wake += [s.kill_at for s in slots if s.kill_at]
            if any(s.paused for s in slots):
                wake.append(time.monotonic() + _PAUSE_POLL_S)
            _wait(slots, min(wake))
    finally:
        for slot in slots:
            slot.proc.kill()
            slot.proc.wait()
            _close(slot)
    return killed, crashes, cancelled, timed_out


def _resume(slot: _Slot, db: Database, now: float, config: KillConfig) -> bool:
    """Resume a paused victim once its lease ran out and another worker took
    its job (the message was received again, or is gone), or after
    :data:`_PAUSE_LEASES` leases; return whether it was resumed."""
    assert slot.paused is not None
    receipt, since = slot.paused
    message_id, fence = parse_receipt(receipt)
    try:
        found = db.read(
            lambda conn: rows(conn, "SELECT fence FROM messages WHERE id = ?", (message_id,))
        )
    except BusyError:  # WAL recovery behind the paused victim's lock: let it go
        found = []
    if found == [(fence,)] and now < since + _PAUSE_LEASES * config.visibility_timeout:
        return False
    slot.proc.send_signal(signal.SIGCONT)
    slot.paused = None
    return True


def _cancel(db: Database, parent: str, mutant: str | None) -> bool:
    """Cancel ``parent`` (under the victims' seeded bug, if any); return False
    if it had already finished."""
    with contextlib.ExitStack() as stack:
        if mutant is not None:
            from litejobs.testing._mutants import mutant as seeded

            stack.enter_context(seeded(mutant))
        try:
            JobStore(db).cancel(parent)
        except InvalidTransitionError:
            return False
    return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+: fall back to polling
        return None


def _close(slot: _Slot) -> None:
    if slot.pidfd is not None:
        os.close(slot.pidfd)
        slot.pidfd = None
    if slot.proc.stdout is not None:
        slot.proc.stdout.close()


def _wait(slots: list[_Slot], until: float) -> None:
    """Block until a victim exits or prints, or ``until`` (monotonic) comes."""
    timeout = max(0.0, until - time.monotonic())
    pidfds = [s.pidfd for s in slots if s.pidfd is not None]
    outs = [fd for s in slots if (fd := s.stdout) is not None]
    if slots and len(pidfds) == len(slots):
        select.select(pidfds + outs, [], [], timeout)
    else:  # no pidfds: an exit is seen by polling
        select.select(outs, [], [], min(timeout, 0.02))


def _last_line(path: Path) -> str:
    lines = path.read_text("utf-8", errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


@attrs.frozen
class KillReport:
    """Every trial of a run, and their totals."""

    config: KillConfig
    trials: tuple[TrialResult, ...]
    interrupted: bool = False

    @property
    def failed(self) -> list[TrialResult]:
        return [t for t in self.trials if not t.ok]

    def total(self, field: str) -> int:
        return sum(getattr(t.check, field) for t in self.trials)

    def to_json(self) -> dict[str, object]:
        return {
            "config": attrs.asdict(self.config),
            "interrupted": self.interrupted,
            "trials": [
                {
                    "trial": t.trial,
                    "seed": t.seed,
                    "planned": [k.describe() for k in t.planned],
                    "killed": list(t.killed),
                    "crashes": list(t.crashes),
                    "cancelled": t.cancelled,
                    "timed_out": t.timed_out,
                    "ok": t.ok,
                    "wall_s": round(t.wall_s, 3),
                    "check": {
                        **attrs.asdict(t.check),
                        "lost": t.check.lost,
                        "double_effects": t.check.double_effects,
                    },
                }
                for t in self.trials
            ],
        }


def run_kill(
    config: KillConfig,
    directory: Path | None = None,
    *,
    progress: Callable[[TrialResult], None] | None = None,
) -> KillReport:
    """Run ``config.trials`` kill trials, each on a fresh file; Ctrl-C ends
    the run after the trial under way, with the trials done so far."""
    results: list[TrialResult] = []
    with _workdir(directory) as where:
        try:
            for trial in range(config.trials):
                result = run_trial(config, trial, where / f"trial-{config.seed + trial}")
                results.append(result)
                if progress:
                    progress(result)
        except KeyboardInterrupt:
            return KillReport(config, tuple(results), interrupted=True)
    return KillReport(config, tuple(results))


@contextlib.contextmanager
def _workdir(directory: Path | None) -> Iterator[Path]:
    """The directory trials run in: ``directory``, or a temporary one removed after."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="litejobs-chaos-") as tmp:
        yield Path(tmp)


def format_kill(report: KillReport) -> str:
    """The report as a person reads it: kills by point, then the totals."""
    config, trials = report.config, report.trials
    shape = config.shape
    planned = Counter(k.point for t in trials for k in t.planned)
    done = Counter(p for t in trials for p in t.killed)
    lines = [
        f"litejobs chaos kill: {len(trials)} trials from seed {config.seed}"
        + (" (interrupted)" if report.interrupted else ""),
        f"each: {config.processes} processes x {config.workers} workers, "
        f"{shape.parents} parents x {shape.children} children, each spawning {shape.fan_out} "
        f"({shape.jobs} jobs), {config.kills} kills planned",
        "",
        "| kill point | planned | happened |",
        "|---|---:|---:|",
        *(f"| {p} | {planned[p]} | {done[p]} |" for p in KILL_POINTS),
        f"| all | {sum(planned.values())} | {sum(done.values())} |",
        "",
        "| check | total |",
        "|---|---:|",
        f"| jobs handed in | {sum(t.check.expected for t in trials)} |",
        f"| jobs completed | {report.total('completed')} |",
        f"| jobs cancelled with their parent | {report.total('cancelled')} |",
        f"| handler runs (a job may run more than once) | {report.total('runs')} |",
        f"| lost | {sum(t.check.lost for t in trials)} |",
        f"| double effects | {sum(t.check.double_effects for t in trials)} |",
        f"| of which results or plain deletes under a stale receipt | {report.total('stale')} |",
        f"| of which results written twice | {report.total('rewritten')} |",
        f"| of which runs beyond starts, starts beyond receives | {report.total('overruns')} |",
        f"| first-attempt failures wrong | {report.total('mishandled')} |",
        f"| stuck | {report.total('stuck')} |",
        f"| parents rolled up wrong | {report.total('rollups_wrong')} |",
        f"| messages left | {report.total('messages_left')} |",
        f"| integrity ok | {sum(t.check.integrity == 'ok' for t in trials)}/{len(trials)} |",
        f"| trials with a parent cancelled mid-run | {sum(t.cancelled for t in trials)} |",
        f"| victims that crashed | {sum(len(t.crashes) for t in trials)} |",
        f"| trials past the deadline | {sum(t.timed_out for t in trials)} |",
    ]
    walls = sorted(t.wall_s for t in trials)
    if walls:
        lines += [
            "",
            f"trial wall time: median {walls[len(walls) // 2]:.2f} s, max {walls[-1]:.2f} s",
        ]
    for t in report.failed:
        lines.append(f"FAILED trial seed {t.seed}: {_problems(t)}")
    return "\n".join(lines)


def _problems(t: TrialResult) -> str:
    c = t.check
    found = [
        f"{name} {value}"
        for name, value in (
            ("lost", c.lost),
            ("double effects", c.double_effects),
            ("stale results", c.stale),
            ("first-attempt failures wrong", c.mishandled),
            ("stuck", c.stuck),
            ("roll-ups wrong", c.rollups_wrong),
            ("messages left", c.messages_left),
        )
        if value
    ]
    if c.integrity != "ok":
        found.append(f"integrity: {c.integrity}")
    found += [f"victim crashed: {line}" for line in t.crashes]
    if t.timed_out:
        found.append("past the deadline")
    return ", ".join(found)
