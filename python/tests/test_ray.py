"""flowar.ray.generate_dataset on a local 2-CPU Ray cluster: the CLI's pixels and files,
resuming, a worker that dies, and settings that do not match the folder."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flowar
from conftest import cli_generate

ray = pytest.importorskip("ray") if os.environ.get("FLOWAR_REQUIRE_RAY") != "1" else __import__("ray")
import flowar.ray as fray  # noqa: E402

CLASSES = [0, 3, 5, 7, 2, 9]
COUNT = 12


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Workers inherit the fault-injection variables; each marker file exists (disarmed)
    until a test removes it: ``exit`` (a worker exits before writing anything) and ``kill``
    (a worker that wrote a batch SIGKILLs itself inside its next generate)."""
    d = tmp_path_factory.mktemp("fault")
    markers = {"exit": d / "worker-exited", "kill": d / "worker-killed"}
    for m in markers.values():
        m.touch()
    os.environ[fray._FAULT_ENV] = str(markers["exit"])
    os.environ[fray._KILL_ENV] = str(markers["kill"])
    yield markers
    del os.environ[fray._FAULT_ENV]
    del os.environ[fray._KILL_ENV]


@pytest.fixture(scope="module")
def cluster(faults):
    """A local cluster of 2 CPUs; its workers see the fault-injection variables."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield faults["exit"]
    ray.shutdown()


@pytest.fixture(scope="module")
def cli_set(demo, flowar_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    cli_generate(flowar_bin, demo, out, "--provider", "ort-cpu", "--threads", "1",
                 "--count", str(COUNT), "--batch-size", "4", "--seed", "3",
                 "--class", *map(str, CLASSES))
    return out


def images(out, indices=range(COUNT)):
    return np.stack([flowar.read_image(out / f"{k:06d}.png")[0] for k in indices])


def run(demo, out, **kw):
    args = dict(classes=CLASSES, seed=3, out_dir=out, provider="ort-cpu", num_workers=2,
                batch_size=4, progress=False)
    args.update(kw)
    return fray.generate_dataset(demo, COUNT, **args)


KILLED_DRIVER = """
import os, signal, sys
import flowar.ray as fray
os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)  # killed before the rename
fray._write_json_atomic(sys.argv[1], {"count": 1})
"""


def killed_driver_temporary(path) -> Path:
    """The temporary that a driver SIGKILLed in the middle of writing ``path`` left."""
    before = set(path.parent.iterdir())
    r = subprocess.run([sys.executable, "-c", KILLED_DRIVER, str(path)], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = set(path.parent.iterdir()) - before
    assert len(left) == 1, left
    (tmp,) = left
    assert tmp.name.startswith(f".{path.name}.tmp-"), tmp
    return tmp


def test_ray_writes_the_cli_set(cluster, demo, cli_set, flowar_bin, tmp_path):
    seen = []
    record = run(demo, tmp_path, progress=lambda n, total: seen.append((n, total)))
    assert np.array_equal(images(tmp_path), images(cli_set))
    for k in range(COUNT):
        assert flowar.read_image(tmp_path / f"{k:06d}.png")[1] == \
            flowar.read_image(cli_set / f"{k:06d}.png")[1]
    cli_run = json.loads((cli_set / "run.json").read_text())
    ray_run = json.loads((tmp_path / "run.json").read_text())
    assert ray_run == record
    assert set(cli_run) <= set(ray_run)
    for key in ("model_hash", "classes", "indices", "count", "seed", "cfg", "guidance",
                "steps", "solver", "batch_size"):
        assert ray_run[key] == cli_run[key], key
    assert record["engine"]["workers"] == 2 and record["engine"]["generated_images"] == COUNT
    assert seen[0] == (0, COUNT) and seen[-1] == (COUNT, COUNT)
    npz = tmp_path / "samples.npz"
    subprocess.run([str(flowar_bin), "pack", str(tmp_path), "--out", str(npz)], check=True,
                   capture_output=True)
    assert np.array_equal(np.load(npz)["arr_0"], images(cli_set))


def test_ray_resumes_and_redoes_half_written_images(cluster, demo, cli_set, tmp_path):
    run(demo, tmp_path)
    for k in (1, 6):
        os.remove(tmp_path / f"{k:06d}.png")
    data = (tmp_path / "000010.png").read_bytes()
    (tmp_path / "000010.png").write_bytes(data[:40])
    (tmp_path / ".000011.png.tmp-999").write_bytes(b"partial")
    before = {k: os.stat(tmp_path / f"{k:06d}.png").st_mtime_ns for k in (0, 5, 9)}
    record = run(demo, tmp_path)
    assert record["engine"]["resumed_images"] == COUNT - 3
    assert record["engine"]["generated_images"] == 3
    assert {k: os.stat(tmp_path / f"{k:06d}.png").st_mtime_ns for k in (0, 5, 9)} == before
    assert not (tmp_path / ".000011.png.tmp-999").exists()
    # Redone images ran in smaller batches: within one level of the CLI's (README).
    diff = np.abs(images(tmp_path).astype(int) - images(cli_set).astype(int))
    assert diff.max() <= 1
    # A driver killed between writing run.json's temporary and its rename leaves the
    # temporary; the next run on this host removes it (no worker runs then, so the driver
    # must), and leaves a live process's alone.
    stale = killed_driver_temporary(tmp_path / "run.json")
    live = stale.with_name(stale.name.rsplit("-", 1)[0] + "-1")  # pid 1 is always alive
    live.write_text("{}")
    # Nothing left to do: no worker is started.
    again = run(demo, tmp_path)
    assert again["engine"]["generated_images"] == 0 and again["engine"]["workers"] == 0
    assert not stale.exists()
    assert live.exists()


def test_a_worker_that_dies_has_its_images_redone(cluster, demo, cli_set, tmp_path):
    os.remove(cluster)  # arm: the next batch's worker exits without writing anything
    record = run(demo, tmp_path)
    assert cluster.exists(), "no worker took the injected exit"
    assert record["engine"]["worker_failures"] == 1
    assert np.array_equal(images(tmp_path), images(cli_set))


def pack(flowar_bin, folder, out):
    subprocess.run([str(flowar_bin), "pack", str(folder), "--out", str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_worker_killed_inside_generate_after_writing_images(
    cluster, faults, demo, cli_set, flowar_bin, tmp_path
):
    """SIGKILL of a worker that has written a batch, while it runs the next: the run
    finishes, every image is whole and written once (an image seen after one batch keeps
    its inode and mtime to the end), and the pack equals a clean run's byte for byte."""
    os.remove(faults["kill"])  # arm
    out = tmp_path / "set"
    seen = {}

    def watch(n, total):
        for p in out.glob("*.png"):
            st = p.stat()
            seen.setdefault(p.name, (st.st_ino, st.st_mtime_ns))

    record = run(demo, out, progress=watch)
    assert faults["kill"].exists(), "no worker took the injected SIGKILL"
    assert record["engine"]["worker_failures"] == 1
    assert listing(out) == sorted([f"{k:06d}.png" for k in range(COUNT)] + ["run.json"])
    assert np.array_equal(images(out), images(cli_set))
    assert len(seen) >= 4, seen  # the killed worker had written a batch first
    for name, first in seen.items():
        st = (out / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == first, f"{name} was written again"
    assert pack(flowar_bin, out, tmp_path / "a.npz") == pack(flowar_bin, cli_set, tmp_path / "b.npz")


def test_more_worker_deaths_than_allowed_stop_the_run_and_a_rerun_completes(
    cluster, faults, demo, cli_set, tmp_path
):
    os.remove(faults["kill"])
    with pytest.raises(flowar.Error, match=r"died 1 times \(max_worker_failures=0\)"):
        run(demo, tmp_path, max_worker_failures=0)
    # What the dead run left is whole; the rerun does the rest.
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".png")]
    assert 0 < len(left) < COUNT and not (tmp_path / "run.json").exists()
    for p in left:
        flowar.read_image(p)
    record = run(demo, tmp_path)
    assert record["engine"]["resumed_images"] == len(left)
    assert np.array_equal(images(tmp_path), images(cli_set))


def test_a_folder_of_other_settings_is_refused(cluster, demo, tmp_path):
    run(demo, tmp_path, batch_size=12, num_workers=1)
    with pytest.raises(ValueError, match=r"000000.png: its seed is '3', this run's is '4'"):
        run(demo, tmp_path, seed=4)
    with pytest.raises(ValueError, match="class"):
        run(demo, tmp_path, classes=[1, 2])


def test_bad_arguments_are_refused_before_any_work(cluster, demo, tmp_path):
    with pytest.raises(ValueError, match="count"):
        fray.generate_dataset(demo, 0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown class `dodecahedron`"):
        run(demo, tmp_path, classes=["dodecahedron"])
    with pytest.raises(ValueError, match="step schedule|one count per scale"):
        run(demo, tmp_path, steps=[25, 25])
    with pytest.raises(FileNotFoundError):
        fray.generate_dataset(tmp_path / "no-model", 4, out_dir=tmp_path / "x")
    with pytest.raises(flowar.Error, match="could not load"):
        run(demo, tmp_path, provider="tensorrt")
    assert not any(p.name.endswith(".png") for p in tmp_path.iterdir())


def test_class_lists_follow_the_cli_rule(demo):
    m = flowar.read_manifest(demo)
    assert fray.class_list(m, 5, [4]) == [4] * 5
    assert fray.class_list(m, 5, ["teal-cross", 1]) == [9, 1, 9, 1, 9]
    # No classes: every named class in turn, count / num_classes images each.
    default = fray.class_list(m, 30)
    assert default[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert all(default.count(c) == 3 for c in range(10))
    with pytest.raises(ValueError, match="out of range"):
        fray.class_list(m, 3, [m["num_classes"]])
    # The runtime's rule, as for flowar.Pipeline: numpy ids, ids as text, one name alone.
    assert fray.class_list(m, 3, [np.int64(2), "7"]) == [2, 7, 2]
    assert fray.class_list(m, 2, "teal-cross") == [9, 9]
    with pytest.raises(ValueError, match="classes is empty"):
        fray.class_list(m, 3, [])
    with pytest.raises(TypeError, match="a class is an id"):
        fray.class_list(m, 3, [True])
