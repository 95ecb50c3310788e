"""The public surface is small, explicit and reports itself as ``litejobs``."""

import litejobs

PUBLIC = {
    "BusyError",
    "ChildStats",
    "Clock",
    "ConfigError",
    "Database",
    "DeadLetter",
    "InvalidPayloadError",
    "InvalidTransitionError",
    "Job",
    "JobContext",
    "JobStatus",
    "JobStore",
    "LiteJobsError",
    "Message",
    "NotFoundError",
    "PoolStats",
    "Queue",
    "QueueStats",
    "RetryMetrics",
    "RetryPolicy",
    "Runtime",
    "SchemaError",
    "StaleReceiptError",
    "StorageError",
    "SystemClock",
    "Tolerance",
    "ToleranceAction",
    "TrioRuntime",
    "VirtualClock",
    "WorkerPool",
    "WorkerStats",
    "run_db",
}


def test_all_names_exactly_the_public_surface():
    assert set(litejobs.__all__) == PUBLIC
    assert sorted(litejobs.__all__) == litejobs.__all__


def test_public_objects_report_the_litejobs_module():
    for name in PUBLIC:
        assert getattr(litejobs, name).__module__ == "litejobs", name


def test_the_testing_namespace_re_exports_the_tester():
    import litejobs.testing

    assert set(litejobs.testing.__all__) == {
        "Chooser",
        "DeadlockError",
        "FairChooser",
        "HypothesisChooser",
        "InlineRuntime",
        "InvariantError",
        "MUTANTS",
        "Mutant",
        "Option",
        "PCTChooser",
        "PROFILES",
        "QueueContract",
        "QueueModel",
        "RandomChooser",
        "ReplayChooser",
        "ReplayDivergedError",
        "Scheduler",
        "SchedulerClock",
        "Step",
        "TrioTimeClock",
        "WorkerCrashed",
        "default_profile",
        "format_trace",
        "hierarchy_machine",
        "interleaving_machine",
        "mutant",
        "queue_machine",
        "register_profiles",
    }
    for name in litejobs.testing.__all__:
        obj = getattr(litejobs.testing, name)
        if isinstance(obj, type):
            assert obj.__module__ == "litejobs.testing"


def test_every_error_derives_from_litejobs_error():
    errors = [getattr(litejobs, n) for n in PUBLIC if n.endswith("Error")]
    assert len(errors) == 9
    assert all(issubclass(e, litejobs.LiteJobsError) for e in errors)


def test_bad_argument_errors_are_also_builtin_errors():
    assert issubclass(litejobs.ConfigError, ValueError)
    assert issubclass(litejobs.InvalidPayloadError, ValueError)
    assert issubclass(litejobs.NotFoundError, LookupError)


def test_the_fuzz_package_reports_itself_and_sorts_its_names():
    import litejobs.fuzz

    assert sorted(litejobs.fuzz.__all__) == litejobs.fuzz.__all__
    for name in litejobs.fuzz.__all__:
        value = getattr(litejobs.fuzz, name)
        if isinstance(value, type):
            assert value.__module__ == "litejobs.fuzz", name


def test_the_chaos_package_exports_exactly_its_public_names_and_reports_itself():
    import litejobs.chaos

    public = {n for n in vars(litejobs.chaos) if n.isidentifier() and not n.startswith("_")}
    assert public == set(litejobs.chaos.__all__)
    for name in litejobs.chaos.__all__:
        value = getattr(litejobs.chaos, name)
        if isinstance(value, type):
            assert value.__module__ == "litejobs.chaos", name
