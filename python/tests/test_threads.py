"""Several Python threads on one ``flowar.Pipeline`` and on several, on every CPU provider:
every call finishes, every image equals a sequential run, every call reports each of its
solver steps to its progress callback, and calls on one pipeline run one at a time. Each
case runs ``bench/soak/py_threads.py`` in a child process with a generous time limit, so
a deadlock (as two threads on one pipeline once had: one held the GIL waiting for the
pipeline, the other held the pipeline waiting for the GIL) fails with a message instead of
hanging the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak" / "py_threads.py"

# Far above what these runs take (seconds); only a hang reaches it.
GUARD_S = 300

# (threads, requests per thread) per provider: tract's two shapes (few threads with many
# requests, many threads with few); one short case on the others (OpenVINO's pipelines
# take longest to load).
CASES = {"tract": [(2, 4), (8, 2)], "ort-cpu": [(4, 2)], "openvino": [(3, 2)]}

# What py_threads.py asks of each call: two images, one per batch, 3 steps.
IMAGES, STEPS = 2, 3


def run_threads(model, provider: str, threads: int, requests: int) -> dict:
    cmd = [sys.executable, str(SCRIPT), str(model), str(threads), str(requests), provider]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{provider}: {threads} threads x {requests} requests on shared and own Pipelines "
            f"did not finish in {GUARD_S} s: a deadlock between the GIL and the Pipeline's lock"
        )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def test_threads_on_shared_and_own_pipelines(demo, provider):
    scales = len(json.loads((demo / "manifest.json").read_text())["scales"])
    # A time grid of N steps has N - 1 Euler steps (docs/cli.md), each reported once.
    steps_per_call = IMAGES * scales * (STEPS - 1)
    for threads, requests in CASES[provider]:
        out = run_threads(demo, provider, threads, requests)
        calls = 2 * threads * requests  # each request on the shared pipeline and the own
        assert out["provider"] == provider, out
        assert out["errors"] == [], out
        assert out["calls"] == calls, out
        assert out["mismatches"] == 0, out
        assert out["progress_steps_per_call"] == {str(steps_per_call): calls}, out
        # docs/python.md: calls on one Pipeline run one at a time. No shared call's steps
        # were interleaved with another's, and calls did meet: some began while the call
        # before them was still running, and waited.
        assert out["shared_interleaved"] == 0, out
        assert out["shared_waited"] > 0, out
