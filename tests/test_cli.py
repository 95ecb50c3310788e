"""``litejobs bench`` and the command line around it (no timing assertions)."""

import json
import subprocess
import sys

import pytest

from litejobs._bench import run_bench
from litejobs._cli import main


def test_bench_json_reports_every_path_and_ratio(capsys, tmp_path):
    assert (
        main(["bench", "--messages", "40", "--rounds", "1", "--json", "--dir", str(tmp_path)]) == 0
    )
    out, err = capsys.readouterr()
    report = json.loads(out)
    for key in ("baseline_msgs_per_s", "raw_msgs_per_s", "single_msgs_per_s", "batch_msgs_per_s"):
        assert report[key] > 0
    assert report["single_vs_baseline"] == pytest.approx(
        report["single_msgs_per_s"] / report["baseline_msgs_per_s"]
    )
    assert report["batch_vs_single"] == pytest.approx(
        report["batch_msgs_per_s"] / report["single_msgs_per_s"]
    )
    assert report["messages"] == 40
    assert "round 1/1" in err
    assert list(tmp_path.iterdir()) == []


def test_bench_table_names_the_paths(capsys):
    assert main(["bench", "--messages", "20", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    for path in ("baseline", "raw", "single", "batch: 16 per transaction"):
        assert path in table


def test_every_bench_path_drains_its_queue_with_an_odd_batch_size():
    result = run_bench(messages=37, batch=5, rounds=1)
    assert result.batch == 5
    assert min(result.baseline_msgs_per_s, result.single_msgs_per_s, result.batch_msgs_per_s) > 0


@pytest.mark.parametrize("argv", [["bench", "--messages", "0"], ["nonsense"], []])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


def test_the_module_runs_as_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "litejobs", "--help"], capture_output=True, text=True, check=True
    )
    assert "bench" in done.stdout


def test_load_writes_results_report_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["load", "--scenario", "custom", "--parents", "2", "--children", "3", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "PASS" in printed.out
    assert "jobs" in printed.err  # the progress bar
    document = json.loads((out / "results.json").read_text())
    assert all(document["criteria"].values())
    assert document["metrics"]["jobs_total"] == 6
    for name in ("report.md", "throughput.png", "queue_depth.png", "completion_times.png"):
        assert (out / name).stat().st_size > 0


def test_load_exits_1_and_marks_the_criteria_that_failed(tmp_path, capsys):
    # A bound too short for the parents to finish: they are not terminal.
    code = main(["load", "--scenario", "light", "--timeout", "0.001", "--out", str(tmp_path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "✗ all_parents_terminal" in out


def test_load_can_compare_worker_counts_on_one_summary_page(tmp_path, capsys):
    page = tmp_path / "summary.md"
    code = main(
        [
            "load",
            "--scenario",
            "custom",
            "--parents",
            "1",
            "--children",
            "2",
            "--workers",
            "1,2",
            "--out",
            str(tmp_path / "runs"),
            "--summary",
            str(page),
        ]
    )
    assert code == 0
    text = page.read_text()
    assert "custom, 1 workers" in text
    assert "custom, 2 workers" in text
    assert (tmp_path / "runs" / "custom-2w" / "report.md").exists()
    assert "runs/custom-1w/throughput.png" in text


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (
            BaseExceptionGroup("g", [BaseExceptionGroup("h", [KeyboardInterrupt()])]),
            130,
            "interrupted",
        ),
        (ExceptionGroup("g", [ExceptionGroup("h", [ValueError()])]), None, None),
    ],
)
def test_interrupts_inside_exception_groups_exit_130(monkeypatch, capsys, raised, code, message):
    import litejobs._load

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.setattr(litejobs._load, "run_load", explode)
    if code is None:
        with pytest.raises(ExceptionGroup):
            main(["load"])
        return
    assert main(["load"]) == code
    assert message in capsys.readouterr().err


def test_a_litejobs_error_inside_a_group_is_reported_plainly(monkeypatch, capsys):
    import litejobs
    import litejobs._load

    def explode(*args, **kwargs):
        raise ExceptionGroup("g", [litejobs.StorageError("disk gone")])

    monkeypatch.setattr(litejobs._load, "run_load", explode)
    assert main(["load"]) == 1
    assert "StorageError: disk gone" in capsys.readouterr().err
