"""flowar.ray.generate_dataset joining a Ray cluster that is already running (``address=``),
as on a real multi-machine cluster, rather than starting a local one for the call. Runs
after test_ray.py's local cluster is shut down; the driver runs in a child process so no
Ray state is shared with the other tests."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import flowar
from conftest import cli_generate

ray = pytest.importorskip("ray") if os.environ.get("FLOWAR_REQUIRE_RAY") != "1" else __import__("ray")

CLASSES = [1, 4, 8]
COUNT = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A Ray head started by ``ray start --block`` in its own process group and its own
    temp dir, stopped (the group, not every Ray process on the machine) at the end.

    Its own temp dir is what makes the test prove the join: ``ray start`` records its
    address in ``<temp dir>/ray_current_cluster`` (late in its start-up, after ``ray
    status`` already answers), and a plain ``ray.init()`` joins whatever the default
    ``/tmp/ray/ray_current_cluster`` names. Kept out of there, this head is reachable only
    through an honoured ``address=``."""
    import shutil
    import tempfile

    port = free_port()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    log = tmp_path / "ray-head.log"
    # Short: Ray's socket paths under it must stay within the 107 bytes Unix allows.
    temp_dir = tempfile.mkdtemp(prefix="frj", dir="/tmp")
    # Token authentication, as a real cluster runs; every client below gets the token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--block",
         f"--temp-dir={temp_dir}", "--include-dashboard=false",
         '--resources={"flowar_join_test_head": 1}'],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    address = f"127.0.0.1:{port}"

    def stop():
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)

    deadline = time.time() + 120
    while subprocess.run([ray_bin, "status", f"--address={address}"],
                         capture_output=True, env=env).returncode != 0:
        if proc.poll() is not None or time.time() > deadline:
            stop()
            pytest.fail(f"the Ray head did not come up at {address}: "
                        f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(1)
    default = "/tmp/ray/ray_current_cluster"

    def check_default():
        # `ray start` writes its address file late: checked now and again after the test.
        assert not (os.path.exists(default)
                    and open(default).read().strip().endswith(f":{port}")), \
            f"ray start --temp-dir still wrote {default}: a plain ray.init() would join this head"

    check_default()
    try:
        yield address, env
        check_default()
    finally:
        stop()


def test_joins_a_running_cluster(head, demo, flowar_bin, tmp_path):
    head, env = head
    cli = tmp_path / "cli"
    cli_generate(flowar_bin, demo, cli, "--provider", "tract", "--threads", "1",
                 "--count", str(COUNT), "--batch-size", "3", "--seed", "5",
                 "--class", *map(str, CLASSES))
    out = tmp_path / "ray"
    # The driver records which cluster `generate_dataset`'s `ray.init` reached: the head
    # carries a resource no other cluster has.
    code = (
        "import json, sys, ray, flowar.ray as fray\n"
        "seen = {}\n"
        "init = ray.init\n"
        "def recording_init(*a, **k):\n"
        "    r = init(*a, **k)\n"
        "    seen['resources'] = ray.cluster_resources()\n"
        "    return r\n"
        "ray.init = recording_init\n"
        f"r = fray.generate_dataset({str(demo)!r}, {COUNT}, classes={CLASSES}, seed=5,"
        f" out_dir={str(out)!r}, provider='tract', num_workers=2, batch_size=3,"
        f" progress=False, address={head!r})\n"
        "assert not ray.is_initialized(), 'the call left its connection open'\n"
        "assert seen.get('resources', {}).get('flowar_join_test_head') == 1, seen\n"
        "print(json.dumps(r['engine']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert '"workers": 2' in p.stdout, p.stdout
    got = np.stack([flowar.read_image(out / f"{k:06d}.png")[0] for k in range(COUNT)])
    want = np.stack([flowar.read_image(cli / f"{k:06d}.png")[0] for k in range(COUNT)])
    assert np.array_equal(got, want)
    # The cluster outlives the call: another driver can still join it.
    again = subprocess.run([sys.executable, "-c",
                            f"import ray; ray.init(address={head!r}); "
                            "print(ray.cluster_resources()['CPU'])"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.strip().endswith("2.0"), again.stderr
