"""The tester itself: failing schedules replay identically, every seeded bug
is caught, and ``litejobs selfcheck`` reports it."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, Phase, reproduce_failure, settings
from hypothesis.database import InMemoryExampleDatabase
from hypothesis.stateful import run_state_machine_as_test

from litejobs._cli import main
from litejobs.testing import MUTANTS, _selfcheck, interleaving_machine, mutant
from litejobs.testing._mutants import Mutant


def failure(machine, config) -> BaseException:
    try:
        run_state_machine_as_test(machine, settings=config)
    except Exception as exc:
        return exc
    raise AssertionError("the machine passed")


def schedule(text: str | BaseException) -> str:
    """The schedule table a failure printed (the engine attaches it to the
    error as a note; a @reproduce_failure run prints it)."""
    if isinstance(text, BaseException):
        text = "\n".join(getattr(text, "__notes__", []))
    found = re.search(r"^schedule \(.*?^ +violated: .*?$", text, re.S | re.M)
    assert found, text
    return found.group(0)


def test_a_failing_schedule_replays_identically_from_the_database_and_the_blob(capsys):
    database = InMemoryExampleDatabase()
    config = settings(settings.get_profile("ci"), database=database, report_multiple_bugs=False)
    replay = settings(config, phases=[Phase.reuse])  # only what the database holds
    with mutant("double_receive"):
        found = failure(interleaving_machine(), config)
        assert list(database.data), "the failure was not saved"
        again = [schedule(failure(interleaving_machine(), replay)) for _ in range(2)]
        notes = "\n".join(found.__notes__)
        version, blob = re.search(r"@reproduce_failure\('([^']+)', b'([^']+)'\)", notes).groups()
        machine = reproduce_failure(version, blob.encode())(interleaving_machine())
        capsys.readouterr()
        failure(machine, settings(config, database=None))
        from_blob = schedule(capsys.readouterr().out)
    first = schedule(found)
    assert "invariant 2 (exclusive lease)" in first
    assert again == [first, first]
    assert from_blob == first


@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_seeded_bug_is_caught_under_the_ci_profile(name):
    result = _selfcheck.check_mutant(name, settings.get_profile("ci"), shrink=False)
    assert result.caught, f"{name} escaped every machine"
    assert result.machine == MUTANTS[name].target


def test_double_receive_shrinks_to_one_send_two_workers_and_four_decisions():
    result = _selfcheck.check_mutant("double_receive", settings.get_profile("ci"))
    assert result.failure.startswith("InvariantError: invariant 2 (exclusive lease)")
    assert result.shrunk_decisions <= 4
    assert len(result.shrunk_example) <= 12
    calls = [call.split("(")[0] for call in result.shrunk_example]
    sends = calls.count("send_plain") + sum(
        1 for call in result.shrunk_example if call.startswith("add_parent(children=1,")
    )
    assert sends == 1
    assert calls.count("add_parent") + calls.count("send_plain") == 1
    assert calls.count("start_worker") == 2
    assert "crash_worker" not in calls


def test_selfcheck_prints_json_and_exits_0_when_every_mutant_is_caught(capsys):
    assert main(["selfcheck", "--mutants", "visibility_off_by_one", "--json", "--quiet"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["mutant"] == "visibility_off_by_one"
    assert row["caught"] is True
    assert row["machine"] == "queue"
    assert row["seconds_to_failure"] > 0
    assert row["shrunk_steps"] >= 1
    assert row["shrunk_decisions"] == 0  # a sequential machine makes no scheduling decisions


def test_selfcheck_exits_1_when_a_mutant_escapes(monkeypatch, capsys):
    harmless = Mutant("harmless", "changes nothing", "queue", lambda: [])
    monkeypatch.setitem(MUTANTS, "harmless", harmless)
    monkeypatch.setattr(_selfcheck, "MACHINES", ("queue",))
    tiny = settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
    monkeypatch.setattr(_selfcheck, "_profile", lambda name: tiny)
    assert main(["selfcheck", "--mutants", "harmless", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^harmless +ESCAPED", out, re.M)
    assert "0 of 1 mutants caught" in out


def test_selfcheck_names_the_mutants_it_knows(capsys):
    assert main(["selfcheck", "--mutants", "nope"]) == 2
    assert "no mutant nope; known: double_receive" in capsys.readouterr().err


def test_a_mutant_is_undone_when_its_block_ends():
    from litejobs import _queue

    before = _queue.DELETE
    with mutant("delete_ignores_receipt"):
        assert before != _queue.DELETE
    assert before == _queue.DELETE
    with pytest.raises(KeyError, match="no mutant 'nope'; known: double_receive"), mutant("nope"):
        pass
