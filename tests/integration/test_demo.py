"""`standing demo` (the quick start's first command), run the way a newcomer runs it: twice in a row."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from standing.processes import free_port


def _demo(tmp_path, seconds: float = 12) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "STANDING_DATA_DIR": str(tmp_path / "demo" / "worker"),
        "STANDING_BROKER_DATA_DIR": str(tmp_path / "demo" / "broker"),
    }
    command = [
        sys.executable, "-m", "standing", "demo", "--seconds", str(seconds), "--users", "300", "--rate", "100",
        "--broker", f"127.0.0.1:{free_port()}", "--web-port", str(free_port()), "--metrics-port", str(free_port()),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)


@pytest.mark.timeout(400)
def test_a_second_demo_starts_afresh_and_both_stop_cleanly(tmp_path):
    log = tmp_path / "demo" / "demo-worker.log"
    for run in (1, 2):
        done = _demo(tmp_path)
        said = done.stdout + done.stderr
        assert done.returncode == 0, said
        assert "stopped cleanly" in said and "exited with code" not in said, said
        assert re.search(r"t=\s+\d+s\s+produced\s+[1-9]", said), "figures every second"
        assert ("starting afresh" in said) == (run == 2), said
        problems = [line for line in log.read_text().splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]
        assert not problems, problems  # e.g. a ConsistencyError on kept state, an error while stopping


def test_the_demo_never_removes_files_that_are_not_an_earlier_demos(tmp_path):
    foreign = tmp_path / "demo" / "broker" / "notes.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("mine")
    done = _demo(tmp_path, seconds=5)
    assert done.returncode == 2
    assert "not an earlier demo's" in done.stdout and "STANDING_BROKER_DATA_DIR" in done.stdout
    assert foreign.read_text() == "mine"
