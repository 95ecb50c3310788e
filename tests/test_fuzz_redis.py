"""Sharing failures through Redis: two fuzz processes write to one Redis
database, and a pytest run pointed at it replays what one of them found,
without writing to it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fuzzhelpers import env, pytest_replay, reused_failures


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """``LITEJOBS_TEST_REDIS_URL``, else a redis-server of our own on a free
    port (``.ci/run`` installs one); the test is skipped only with neither."""
    given = os.environ.get("LITEJOBS_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server on PATH and LITEJOBS_TEST_REDIS_URL unset")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # wait for the server to say it is ready
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail(f"redis-server exited with {process.wait()}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def _contents(url: str) -> dict[bytes, set[bytes]]:
    """Every saved example, by key: Hypothesis keeps a set per key."""
    import redis

    client = redis.Redis.from_url(url)
    return {key: client.smembers(key) for key in client.keys("*")}


def test_a_failure_one_fuzz_process_finds_replays_from_redis_in_pytest(redis_url, tmp_path):
    def start(directory: str, *args: str) -> subprocess.Popen[str]:
        cwd = tmp_path / directory
        cwd.mkdir()
        command = [sys.executable, "-m", "litejobs", "fuzz", "--budget", "10s", "--seed", "1"]
        command += ["--machines", "queue", "--database", redis_url, *args]
        return subprocess.Popen(
            command, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    buggy = start("a", "--mutant", "visibility_off_by_one")
    correct = start("b")
    buggy_out, buggy_err = buggy.communicate(timeout=300)
    correct_out, correct_err = correct.communicate(timeout=300)
    assert buggy.returncode == 1, buggy_out + buggy_err
    assert correct.returncode == 0, correct_out + correct_err
    saved = _contents(redis_url)
    assert saved

    replay = pytest_replay(
        tmp_path,
        "test_litejobs_queue_machine.py",
        "--litejobs-db",
        redis_url,
        "--litejobs-mutant",
        "visibility_off_by_one",
    )
    assert replay.returncode == 1, replay.stdout
    assert f"replaying from {redis_url} (read-only)" in replay.stdout
    assert reused_failures(replay.stdout) >= 1, replay.stdout
    assert "state = QueueMachine()" in replay.stdout  # the shrunk steps, printed
    assert _contents(redis_url) == saved  # the shared database was only read
