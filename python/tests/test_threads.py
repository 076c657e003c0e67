"""Several Python threads on one ``flowar.Pipeline`` and on several: every call finishes
and every image equals a sequential run. Each case runs in a child process with a
generous time limit, so a deadlock (as two threads on one pipeline once had: one held the
GIL waiting for the pipeline, the other held the pipeline waiting for the GIL) fails with
a message instead of hanging the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak" / "py_threads.py"

# Far above what these runs take (seconds); only a hang reaches it.
GUARD_S = 300


def run_threads(model, threads: int, requests: int) -> dict:
    cmd = [sys.executable, str(SCRIPT), str(model), str(threads), str(requests)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{threads} threads x {requests} requests on shared and own Pipelines did not "
            f"finish in {GUARD_S} s: a deadlock between the GIL and the Pipeline's lock"
        )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threads,requests", [(2, 4), (8, 2)])
def test_threads_on_shared_and_own_pipelines_finish_with_sequential_images(
    demo, threads, requests
):
    out = run_threads(demo, threads, requests)
    assert out["errors"] == []
    assert out["calls"] == out["expected_calls"] == 2 * threads * requests
    assert out["mismatches"] == 0
