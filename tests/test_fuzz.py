"""``litejobs fuzz``: budgets, plans, databases, the run and its summary,
replay of its failures by plain pytest, and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from fuzzhelpers import env, fuzz, pytest_replay, reused_failures, stuck_in_one_input
from litejobs import ConfigError
from litejobs.fuzz import (
    FuzzPlan,
    FuzzProgress,
    FuzzSummary,
    LiveDisplay,
    MachineStats,
    _runner,
    open_database,
    parse_budget,
    render,
    run_fuzz,
)
from litejobs.fuzz._runner import grace_s


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("20m", 1200), ("8h", 28800), ("90", 90), ("1.5m", 90)]
)
def test_a_budget_reads_as_people_write_it(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5s", "5d", "soon", "nan", "1e3"])
def test_a_bad_budget_is_a_config_error_that_shows_the_form(text):
    with pytest.raises(ConfigError, match="like 30s or 8h"):
        parse_budget(text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"machines": ("queue", "nope")}, "unknown machine nope; the machines are queue"),
        ({"machines": ()}, "unknown machine"),
        ({"chooser": "random"}, "chooser must be one of hypothesis, pct"),
        ({"mutant": "nope"}, "unknown mutant 'nope'; the mutants are double_receive"),
        ({"jobs": 0}, "jobs must be at least 1"),
        ({"profile": "fast"}, "profile must be one of dev, ci, nightly"),
    ],
)
def test_a_wrong_plan_is_refused_before_any_process_starts(tmp_path, change, message):
    plan = FuzzPlan(budget_s=1, database=str(tmp_path), **change)
    with pytest.raises(ConfigError, match=message):
        run_fuzz(plan)


def test_a_database_that_is_a_file_or_an_unreachable_redis_is_a_config_error(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        open_database(str(afile))
    with pytest.raises(ConfigError, match="cannot reach the example database redis://"):
        open_database("redis://127.0.0.1:1/0")


def test_a_redis_password_never_reaches_a_report():
    from litejobs.fuzz._databases import redact

    assert redact("redis://:s3cret@db.example:6380/2") == "redis://:***@db.example:6380/2"
    assert redact("redis://user:s3cret@db.example/0") == "redis://user:***@db.example/0"
    assert redact("redis://db.example:6379/0") == "redis://db.example:6379/0"
    assert redact("/tmp/examples") == "/tmp/examples"
    assert redact("redis://h:1/0?password=s3cret&ssl=1") == "redis://h:1/0?password=***&ssl=1"
    assert redact("redis://:pa/ss#wo?rd@h:1/0") == "redis://:***@h:1/0"  # unescaped
    assert redact("redis://:s3cret@h:99999999/0") == "redis://:***@h:99999999/0"  # bad port
    with pytest.raises(ConfigError) as refused:
        open_database("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in str(refused.value)
    plan = FuzzPlan(budget_s=1, database="redis://:s3cret@h:1/0")
    summary = FuzzSummary(plan=plan, elapsed_s=1.0, machines={}, rules_total={})
    assert "s3cret" not in summary.to_markdown()
    assert "s3cret" not in json.dumps(summary.to_json())


def test_machine_counts_merge_and_cross_processes_as_json():
    one = MachineStats(examples=2, rules={"a"}, targets={"t": 3.0})
    one.events["e"] += 2
    one.failed("X at f.py:1", "X: first")
    two = MachineStats(examples=5, gave_up=1, rules={"b"}, targets={"t": 7.0, "u": 1.0})
    two.events["e"] += 1
    two.failed("X at f.py:1", "X: second")
    total = one.merge(two)
    assert (total.examples, total.gave_up, total.failures) == (7, 1, 2)
    assert total.rules == {"a", "b"}
    assert total.targets == {"t": 7.0, "u": 1.0}
    assert total.events["e"] == 3
    assert total.messages == {"X at f.py:1": "X: first"}
    assert MachineStats.from_json(total.to_json()) == total


def test_the_correct_code_runs_the_whole_budget_and_passes(tmp_path):
    seen = []
    plan = FuzzPlan(budget_s=4, database=str(tmp_path / "db"), jobs=2, machines=("queue",), seed=1)
    summary = run_fuzz(plan, on_progress=seen.append)
    assert not summary.failed, summary.to_markdown()
    assert summary.errors == ()  # a kill past the grace on a slow machine is no error
    assert plan.budget_s <= summary.elapsed_s <= plan.budget_s + grace_s(plan.budget_s) + 2
    queue = summary.machines["queue"]
    assert queue.examples > 0
    assert queue.rules  # which ones, in a few seconds, is up to the random inputs
    assert queue.rules <= {
        "send", "send_batch", "receive", "receive_again_and_again", "receive_batch",
        "delete", "extend", "nack", "delete_batch", "redrive", "advance",
    }  # fmt: skip
    assert summary.rules_total == {"queue": 11}
    assert seen
    assert seen[-1].machines["queue"].examples == queue.examples
    data = summary.to_json()
    assert data["machines"]["queue"]["examples_per_s"] == pytest.approx(
        queue.examples / summary.elapsed_s, abs=0.01
    )
    assert "| queue |" in summary.to_markdown()


def test_a_mutant_found_by_fuzz_is_replayed_and_shrunk_by_plain_pytest(tmp_path):
    """The acceptance path: fuzz a seeded bug in two processes, then run
    plain pytest in the same directory; it fails in its reuse phase, i.e. on
    the saved failure, and prints the shrunk schedule."""
    found = fuzz(
        tmp_path, "--budget", "60s", "--jobs", "2", "--machines", "interleaving",
        "--mutant", "double_receive", "--report", "report", "--seed", "3", "--exitfirst",
    )  # fmt: skip
    assert found.returncode == 1, found.stdout + found.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["machines"]["interleaving"]["failures"] > 0
    assert "stopped at the first failure" in found.stdout
    assert (tmp_path / ".hypothesis" / "examples").is_dir()

    replay = pytest_replay(
        tmp_path,
        "test_litejobs_interleaving.py::TestLitejobsInterleaving",
        "--litejobs-mutant",
        "double_receive",
    )
    assert replay.returncode == 1, replay.stdout
    assert reused_failures(replay.stdout) >= 1, replay.stdout
    assert "schedule (" in replay.stdout
    assert "invariant 2 (exclusive lease)" in replay.stdout


def _ten_minute_run(cwd, machine: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "litejobs", "fuzz", "--budget", "10m", "--jobs", "2"]
    command += ["--machines", machine, "--report", "report"]
    return subprocess.Popen(
        command, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_ctrl_c_stops_the_run_and_still_writes_the_summary(tmp_path):
    process = _ten_minute_run(tmp_path, "queue")
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # the first progress line: the run is on
        assert first.startswith("fuzz "), first
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["elapsed_s"] < 600
    assert "interrupted after" in out
    assert "Traceback" not in err


def test_the_cli_exits_2_on_a_bad_budget_or_mutant(tmp_path):
    for args in (["--budget", "5d"], ["--mutant", "nope"]):
        done = fuzz(tmp_path, *args)
        assert done.returncode == 2
        assert done.stderr.startswith("litejobs fuzz: ")


def _progress(elapsed: float, failures: tuple[str, ...] = ()) -> FuzzProgress:
    queue = MachineStats(examples=120, failures=len(failures), rules={"send", "receive"})
    queue.events["a message went to the dead letters"] += 3
    return FuzzProgress(
        elapsed_s=elapsed,
        budget_s=60,
        machines={"queue": queue},
        rules_total={"queue": 11},
        failures=failures,
        stopping=False,
    )


def test_the_live_view_shows_the_bar_each_machine_and_each_failure():
    lines = render(_progress(15, ("queue: AssertionError: received 2, expected 1",)))
    assert lines[0].startswith("fuzzing [########")
    assert "25%" in lines[0]
    assert lines[2].split() == ["queue", "120", "1", "2/11", "1", "8.0"]
    assert lines[3] == "  FAILED queue: AssertionError: received 2, expected 1"


def test_a_log_gets_a_line_every_ten_seconds_and_a_last_one(tmp_path):
    stream = io.StringIO()
    display = LiveDisplay(stream)
    for second in (0, 3, 9, 10, 15, 21):
        display(_progress(second))
    display.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "fuzz 0/60 s", "fuzz 10/60 s", "fuzz 21/60 s", "fuzz 21/60 s",
    ]  # fmt: skip
    assert lines[-1] == "fuzz 21/60 s: 120 examples, 0 distinct failures"


def test_fuzz_bench_puts_the_loop_beside_pytest_and_reports_the_ratio(capsys):
    from litejobs._cli import main

    argv = ["fuzz-bench", "--machines", "queue", "--rounds", "1", "--seconds", "0.1"]
    assert main([*argv, "--profile", "dev", "--json"]) == 0
    out, err = capsys.readouterr()
    (row,) = json.loads(out)
    assert row["machine"] == "queue"
    assert row["pytest_examples_per_s"] > 0
    assert row["fuzz_inputs_per_s"] >= row["fuzz_examples_per_s"] > 0
    assert row["ratio"] == pytest.approx(
        row["fuzz_examples_per_s"] / row["pytest_examples_per_s"], rel=0.01
    )
    assert "queue round 1/1: pytest" in err


def test_each_machine_variant_has_one_database_key_shared_with_its_test():
    """A failure fuzzing saves must be found by the same machine's TestCase,
    and never by (or deleted by) another variant's."""
    from hypothesis.internal.reflection import function_digest
    from hypothesis.stateful import get_state_machine_test

    from litejobs.testing import interleaving_machine
    from litejobs.testing._registry import build_machine

    def key(machine) -> bytes:
        return function_digest(get_state_machine_test(machine).hypothesis.inner_test)

    variants = {
        "hypothesis": key(build_machine("interleaving", chooser="hypothesis")),
        "pct": key(build_machine("interleaving", chooser="pct")),
        "pct, 60 steps": key(interleaving_machine(chooser="pct", steps=60)),
        "queue": key(build_machine("queue")),
        "hierarchy": key(build_machine("hierarchy")),
    }
    assert len(set(variants.values())) == len(variants)
    assert key(interleaving_machine()) == variants["hypothesis"]  # what properties/ runs
    assert key(interleaving_machine(chooser="pct")) == variants["pct"]


def test_a_second_ctrl_c_kills_processes_stuck_in_an_input_and_that_is_not_a_failure(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(_runner, "fuzz_process", stuck_in_one_input)
    plan = FuzzPlan(budget_s=600, jobs=2, database=str(tmp_path / "db"), machines=("queue",))
    stopping: list[bool] = []

    def on_progress(progress: FuzzProgress) -> None:
        stopping.append(progress.stopping)
        # The first Ctrl-C as soon as the run is on; the second once the
        # first has been acted on (Python runs one handler for signals that
        # arrive together).
        if len(stopping) == 1 or (stopping.count(True) == 1 and progress.stopping):
            os.kill(os.getpid(), signal.SIGINT)

    summary = run_fuzz(plan, on_progress=on_progress)
    assert summary.interrupted
    assert summary.killed == 2  # both were stuck: only the second Ctrl-C ended them
    assert summary.errors == ()  # killed, and not counted as failed
    assert summary.elapsed_s < plan.budget_s


def test_totals_count_failures_reported_after_the_last_snapshot_once_however_often_asked(
    tmp_path,
):
    plan = FuzzPlan(budget_s=1, database=str(tmp_path / "db"), machines=("queue",))
    fleet = _runner._Fleet(plan, deadline=0.0)  # no process is started
    snapshot = MachineStats(examples=3)
    snapshot.failed("X at f.py:1", "X: first")
    fleet.handle(0, ("stats", {"queue": snapshot.to_json()}))
    fleet.handle(0, ("failure", "queue", "X at f.py:1", "X: first"))
    fleet.handle(0, ("failure", "queue", "X at f.py:1", "X: again"))  # after the snapshot
    first, second = fleet.totals(), fleet.totals()
    assert first == second
    assert (first["queue"].examples, first["queue"].failures) == (3, 2)
    assert first["queue"].messages == {"X at f.py:1": "X: first"}
