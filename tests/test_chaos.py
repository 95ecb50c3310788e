"""The kill harness and the lock storm, on real processes and real files
(small sizes: `litejobs chaos kill --trials 200` is the full run)."""

from __future__ import annotations

import json

import attrs
import pytest

import litejobs
from litejobs import _cli
from litejobs._db import rows
from litejobs.chaos import (
    KILL_POINTS,
    KillConfig,
    PlannedKill,
    StormConfig,
    TreeShape,
    check_tree,
    plan_kills,
    run_storm,
    run_trial,
    seed_tree,
)
from litejobs.chaos._tree import (
    FIRST_ATTEMPT_FAILS,
    KIND,
    RunLog,
    plain_queue,
    plain_refused,
    plain_run,
    tree_queue,
)

SMALL = TreeShape(parents=2, children=4, fan_out=2, work_s=0.005, plain_after_s=0)


# -- the check ------------------------------------------------------------------


def run_by_hand(db, log, *, cancel=None, stop_after=None):
    """Run a seeded tree to its end as a correct worker would: the failing keys
    fail their first attempt, every result names its run and receipt. With
    ``cancel``, that parent is cancelled after ``stop_after`` results."""
    store, queue, runs = litejobs.JobStore(db), tree_queue(db), RunLog(log)
    failing, done = SMALL.failing_keys(), 0
    while (message := queue.receive(visibility_timeout=30)) is not None:
        job = store.start(message.body["job_id"], message.receipt)
        token = runs.record(job.id)
        if job.payload["key"] in failing and job.attempts == 1:
            store.fail(job.id, message.receipt, RuntimeError(FIRST_ATTEMPT_FAILS))
            continue
        if job.payload["depth"] == 0:
            keys = [f"{job.payload['key']}.{j}" for j in range(SMALL.fan_out)]
            store.spawn_children(
                job.parent_id, KIND, [{"key": k, "depth": 1} for k in keys], queue=queue, keys=keys
            )
        store.complete(job.id, message.receipt, {"run": token, "receipt": message.receipt})
        done += 1
        if done == stop_after:
            store.cancel(cancel)
    plain = plain_queue(db)
    while (message := plain.receive(visibility_timeout=30)) is not None:
        runs.record(plain_run(message.receipt))
        plain.delete(message.receipt)
    runs.close()


@pytest.fixture
def tree(tmp_path):
    """A tree finished by hand, as a correct run leaves it, and its run log."""
    path, log = tmp_path / "tree.db", tmp_path / "runs.log"
    with litejobs.Database.open(path) as db:
        parents = seed_tree(db, SMALL)
        run_by_hand(db, log)
    return path, log, parents


def damage(path, *statements):
    with litejobs.Database.open(path) as db:
        for sql, params in statements:
            db.write(lambda conn, sql=sql, params=params: rows(conn, sql, params))


def test_a_finished_tree_checks_clean(tree):
    path, log, parents = tree
    check = check_tree(path, SMALL, parents, log)
    assert check.ok, check
    assert check.completed == check.expected == SMALL.jobs == 2 * (4 + 4 * 2)
    # every failing key ran twice
    assert check.runs == check.expected + 2 * len(SMALL.failing_keys()) == 24 + 4


def test_a_parent_cancelled_mid_run_checks_clean_only_as_cancelled(tmp_path):
    path, log = tmp_path / "tree.db", tmp_path / "runs.log"
    with litejobs.Database.open(path) as db:
        parents = seed_tree(db, SMALL)
        run_by_hand(db, log, cancel=parents[1], stop_after=3)
    check = check_tree(path, SMALL, parents, log, cancelled=[parents[1]])
    assert check.ok, check
    assert check.cancelled > 0
    assert check.completed + check.cancelled == check.expected < SMALL.jobs
    # told nothing of the cancel, the check counts the cancelled work as lost
    blind = check_tree(path, SMALL, parents, log)
    assert blind.failed == check.cancelled
    assert blind.missing > 0
    assert blind.rollups_wrong == 1


def test_a_missing_child_is_lost_and_an_extra_one_a_double_effect(tree):
    path, log, parents = tree
    damage(
        path,
        ("DELETE FROM jobs WHERE key = '0.1' AND parent_id = ?", (parents[0],)),
        (
            "INSERT INTO jobs (parent_id, kind, status, payload, key, created_at, result) "
            "SELECT parent_id, kind, status, payload, '0.9', created_at, result FROM jobs "
            "WHERE key = '0.0' AND parent_id = ?",
            (parents[0],),
        ),
    )
    check = check_tree(path, SMALL, parents, log)
    assert (check.missing, check.extra, check.lost) == (1, 1, 1)
    # the copy's result names a run and a receipt of another job: unrecorded and stale too
    assert (check.unrecorded, check.stale, check.double_effects) == (1, 1, 3)
    assert not check.ok


def test_an_active_job_is_orphaned_without_a_message_and_stuck_with_one(tree):
    path, log, parents = tree
    damage(
        path,
        ("DROP TRIGGER jobs_terminal_is_final", ()),  # a bug could do what it forbids
        ("UPDATE jobs SET status = 'running', message_id = NULL WHERE key = '1'", ()),
        (
            "INSERT INTO messages (queue, body, priority, created, timeout, max_receive) "
            "VALUES ('chaos', '{}', 0, 0, 0, 3)",
            (),
        ),
        (
            "UPDATE jobs SET status = 'pending', message_id = "
            "(SELECT max(id) FROM messages) WHERE key = '2' AND parent_id = ?",
            (parents[0],),
        ),
    )
    check = check_tree(path, SMALL, parents, log)
    assert (check.orphaned, check.stuck, check.messages_left) == (2, 1, 1)
    # the parents still say completed while children are active
    assert check.rollups_wrong == 2


def test_a_result_no_logged_run_produced_is_a_double_effect(tree):
    path, log, parents = tree
    damage(path, ("UPDATE jobs SET result = '{\"run\": \"1:999\"}' WHERE key = '3'", ()))
    check = check_tree(path, SMALL, parents, log)
    assert check.unrecorded == 2  # one per parent
    # the audit saw each result written a second time, under no live receipt
    assert (check.rewritten, check.stale) == (2, 2)
    assert check.double_effects == 6


def test_a_result_written_again_under_its_own_receipt_is_still_a_double_effect(tree):
    path, log, parents = tree
    damage(
        path, ("UPDATE jobs SET result = json_set(result, '$.spawned', 9) WHERE key = '0.1'", ())
    )
    check = check_tree(path, SMALL, parents, log)
    assert (check.rewritten, check.unrecorded, check.stale) == (2, 0, 0)
    assert not check.ok


def test_a_plain_message_deleted_without_a_run_or_gone_unseen_is_lost(tree):
    path, log, parents = tree
    with litejobs.Database.open(path) as db:
        plain = plain_queue(db)
        plain.send("sent after the run, deleted by nobody's run")
        plain.delete(plain.receive(visibility_timeout=30).receipt)
        plain.send("vanishes")
        db.write(lambda conn: rows(conn, "DROP TRIGGER chaos_delete"))
        db.write(lambda conn: rows(conn, "DELETE FROM messages WHERE queue = 'chaos-plain'"))
    check = check_tree(path, attrs.evolve(SMALL, plain=SMALL.plain + 2), parents, log)
    assert check.plain_lost == 2
    assert check.lost == 2


def test_a_plain_message_deleted_while_its_holders_delete_was_refused_is_stale(tree):
    # What a stale receipt's delete leaves: the message is gone under the
    # live receipt, whose holder was told its receipt was stale.
    path, log, parents = tree
    with litejobs.Database.open(path) as db:
        ((message_id, fence),) = rows(
            db.connection(),
            "SELECT message_id, fence FROM chaos_deletes WHERE queue = ?",
            ("chaos-plain",),
        )[:1]
    runs = RunLog(log)
    runs.record(plain_refused(f"{message_id}:{fence}"))
    runs.close()
    check = check_tree(path, SMALL, parents, log)
    assert (check.stale, check.plain_lost) == (1, 0)
    assert not check.ok


def test_a_tree_without_the_audit_checks_clean(tmp_path):
    # A storm's file: plain deletes are not recorded, so they are not counted lost.
    path, log = tmp_path / "tree.db", tmp_path / "runs.log"
    with litejobs.Database.open(path) as db:
        parents = seed_tree(db, SMALL, audit=False)
        run_by_hand(db, log)
    check = check_tree(path, SMALL, parents, log)
    assert check.ok, check
    assert check.completed == SMALL.jobs


def test_more_runs_than_starts_or_more_starts_than_receives_is_an_overrun(tree):
    path, log, parents = tree
    damage(
        path,
        ("UPDATE jobs SET attempts = 0 WHERE key = '0'", ()),  # a run no start counted
        ("UPDATE jobs SET attempts = 5 WHERE key = '1'", ()),  # starts no receive allowed
    )
    check = check_tree(path, SMALL, parents, log)
    assert check.overruns == 4
    assert check.double_effects == 4


def test_a_failing_key_that_never_failed_or_an_error_nobody_raised_is_mishandled(tree):
    path, log, parents = tree
    (failing, *_) = sorted(SMALL.failing_keys())
    damage(
        path,
        ("UPDATE jobs SET attempts = 1 WHERE key = ?", (failing,)),
        ("UPDATE jobs SET error = 'boom' WHERE key = '0'", ()),
    )
    check = check_tree(path, SMALL, parents, log)
    assert check.mishandled == 4
    assert not check.ok


def test_a_torn_last_line_of_the_run_log_is_not_a_run(tmp_path):
    log = tmp_path / "runs.log"
    log.write_text("7 100:1\n8 100:2\n9 10")
    assert RunLog.read(log) == {"7": {"100:1"}, "8": {"100:2"}}


# -- kill trials ------------------------------------------------------------------


def test_a_trials_kills_come_from_its_seed():
    assert plan_kills(5, 6) == plan_kills(5, 6)
    assert plan_kills(5, 6) != plan_kills(6, 6)
    assert {k.point for seed in range(40) for k in plan_kills(seed, 4)} == set(KILL_POINTS)


def test_processes_killed_at_every_point_lose_nothing(tmp_path):
    # Every point but "plain": the plain messages are gone before a later
    # process could pause on one (test_a_resumed_worker_acting_... has it).
    plan = [
        PlannedKill("receive", at=2),
        PlannedKill("handler", at=2),
        PlannedKill("effect", at=1),
        PlannedKill("pause", at=1),
        PlannedKill("batch", at=1),
        PlannedKill("delete", at=2),
        PlannedKill("commit", at=4),
        PlannedKill("write", at=60),
        PlannedKill("sync", at=3),
        PlannedKill("random", after_s=0.3),
    ]
    result = run_trial(KillConfig(processes=2, kills=0, cancel=False), 0, tmp_path, plan=plan)
    assert sorted(result.killed) == sorted(set(KILL_POINTS) - {"plain"})
    assert result.check.ok, result.check
    assert result.ok
    assert result.check.runs > result.check.expected  # killed handlers ran again


def test_a_parent_cancelled_while_processes_die_loses_nothing(tmp_path):
    config = KillConfig(processes=2, shape=TreeShape(parents=2, children=12, fan_out=3))
    plan = [PlannedKill("effect", at=2), PlannedKill("commit", at=6)]
    result = run_trial(config, 4, tmp_path, plan=plan)
    assert result.ok, result.check
    assert result.cancelled  # seed 4 cancels 0.36 s in, long before the tree is done
    assert result.check.cancelled > 0


@pytest.mark.parametrize(("point", "at"), [("pause", 2), ("plain", 1)])
def test_a_resumed_worker_acting_under_a_stale_receipt_is_caught(tmp_path, point, at):
    # The fenced delete ignores the fence: a worker paused past its lease and
    # resumed while another holds the job (or plain message) records its
    # result (deletes the message) anyway. No failing keys: a retried job's
    # new holder works rerun_s only after a lost lease, not after a failure.
    config = KillConfig(
        processes=2,
        mutant="delete_ignores_receipt",
        cancel=False,
        shape=TreeShape(fail_every=0),
    )
    result = run_trial(config, 0, tmp_path, plan=[PlannedKill(point, at=at)])
    assert result.killed == (point,)
    assert result.check.stale >= 1
    assert not result.ok
    # the same pause against the real fence: the stale receipt is refused
    fenced = run_trial(
        attrs.evolve(config, mutant=None), 0, tmp_path, plan=[PlannedKill(point, at=at)]
    )
    assert fenced.killed == (point,)
    assert fenced.ok, fenced.check


def test_a_reused_directory_starts_from_a_fresh_file_and_log(tmp_path):
    config = KillConfig(processes=1, kills=0, cancel=False)
    first = run_trial(config, 0, tmp_path, plan=[])
    logged = RunLog.read(tmp_path / "runs.log")
    second = run_trial(config, 0, tmp_path, plan=[])
    assert first.ok
    assert second.ok, second.check
    assert second.check.runs == first.check.runs
    again = RunLog.read(tmp_path / "runs.log")
    assert sum(map(len, again.values())) == sum(map(len, logged.values()))


def test_a_kill_between_saving_a_result_and_deleting_its_message_is_caught(tmp_path):
    config = KillConfig(processes=1, mutant="save_and_delete_apart", cancel=False)
    result = run_trial(config, 0, tmp_path, plan=[PlannedKill("delete", at=3)])
    assert result.killed == ("delete",)
    assert result.check.messages_left == 1
    assert not result.ok


def test_a_victim_that_keeps_crashing_fails_the_trial_instead_of_looping(tmp_path):
    result = run_trial(KillConfig(processes=1, mutant="no_such_mutant"), 0, tmp_path, plan=[])
    assert len(result.crashes) == 3
    assert "no_such_mutant" in result.crashes[0]
    assert not result.ok


@pytest.mark.parametrize(
    "make",
    [
        lambda: KillConfig(trials=0),
        lambda: KillConfig(kills=-1),
        lambda: KillConfig(deadline_s=0),
        lambda: KillConfig(visibility_timeout=-1),
        lambda: TreeShape(parents=0),
        lambda: TreeShape(fan_out=-1),
        lambda: TreeShape(fail_every=-1),
        lambda: TreeShape(rerun_s=-0.5),
        lambda: TreeShape(plain_after_s=-1),
        lambda: KillConfig(checkpoint_pages=0),
        lambda: StormConfig(workers=0),
    ],
)
def test_bad_settings_are_config_errors(make):
    with pytest.raises(litejobs.ConfigError):
        make()


def test_a_bad_setting_on_the_command_line_is_a_one_line_error_and_exit_1(capsys):
    assert _cli.main(["chaos", "kill", "--deadline", "-1"]) == 1
    assert "deadline_s and visibility_timeout must be > 0" in capsys.readouterr().err


# -- the lock storm ---------------------------------------------------------------


def test_a_small_storm_finishes_every_job_with_no_busy_error(tmp_path):
    # A 2 ms busy timeout hands most lock waits to litejobs' retry policy.
    shape = TreeShape(4, 50, 1, 0.0, fail_every=0, plain=0)
    config = StormConfig(processes=3, workers=2, shape=shape, busy_timeout=0.002)
    result = run_storm(config, tmp_path)
    assert result.crashes == ()
    assert result.check.ok, result.check
    assert len(result.completed_per_worker) == 6
    assert sum(result.completed_per_worker) == result.check.completed == 400
    assert (result.busy_errors_surfaced, result.busy_errors_caught) == (0, 0)
    assert result.operations >= 3 * 400  # receive, start and complete per job
    assert sum(result.attempts.values()) == result.operations
    assert result.retries > 0
    assert max(result.attempts) >= 2
    # Nobody starved. At this size one 100 ms back-off is a sixth of the run:
    # the least-served worker completed 2-39 of 67 fair jobs over 30 runs
    # (docs/reliability.md); the full-size spread is measured there, not
    # asserted.
    assert min(result.completed_per_worker) > 0
    assert result.ok


def test_a_storm_in_a_reused_directory_counts_only_itself(tmp_path):
    config = StormConfig(
        processes=2, workers=1, shape=TreeShape(2, 5, 1, 0.0, fail_every=0, plain=0)
    )
    run_storm(config, tmp_path)
    (tmp_path / "stats-9.json").write_text("{}")  # a stale file of a larger storm
    again = run_storm(config, tmp_path)
    assert again.ok, again.check
    assert again.check.runs == again.check.expected == 20
    assert len(again.completed_per_worker) == 2


# -- the command ------------------------------------------------------------------


def test_chaos_kill_prints_its_table_and_exits_0(capsys):
    code = _cli.main(["chaos", "kill", "--trials", "1", "--seed", "7", "--children", "3"])
    out = capsys.readouterr()
    assert code == 0, out.out
    assert "| lost | 0 |" in out.out
    assert "| integrity ok | 1/1 |" in out.out
    assert "[1/1] seed 7: ok" in out.err


@pytest.mark.parametrize(("flag", "cancel"), [([], True), (["--no-cancel"], False)])
def test_chaos_kill_cancels_a_parent_unless_told_not_to(capsys, flag, cancel):
    argv = ["chaos", "kill", "--trials", "1", "--kills", "0", "--children", "2", "--json"]
    assert _cli.main([*argv, *flag]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["cancel"] is cancel


def test_chaos_kill_exits_1_when_a_trial_fails(capsys):
    argv = ["chaos", "kill", "--trials", "1", "--kills", "0", "--mutant", "no_such_mutant"]
    assert _cli.main([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["trials"][0]["ok"] is False
