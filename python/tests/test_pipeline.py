"""flowar.Pipeline, flowar.convert and flowar.read_image against the CLI and the rules."""

import json
import os
import signal
import threading

import numpy as np
import pytest

import flowar
from conftest import DEMO, cli_generate, provider_available, required


def cli_images(out, indices):
    return np.stack([flowar.read_image(out / f"{k:06d}.png")[0] for k in indices])


def test_pipeline_describes_its_model(demo, provider):
    pipe = flowar.Pipeline(demo, provider=provider, threads=2)
    assert pipe.provider == provider
    assert pipe.provider_reason
    m = pipe.manifest
    assert isinstance(m, dict) and m["name"] == "shapes10"
    assert pipe.image_size == m["image_size"] == 32
    assert pipe.num_classes == m["num_classes"]
    assert pipe.class_names[0] == "red-circle"
    assert provider in repr(pipe)


def test_pixels_equal_the_cli_including_first_index(demo, provider, flowar_bin, tmp_path):
    classes = [0, 3, 5, 7, 2, 9]
    cli_generate(
        flowar_bin, demo, tmp_path, "--provider", provider, "--threads", "2", "--seed", "7",
        "--batch-size", "3", "--count", "6", "--class", *map(str, classes),
    )
    want = cli_images(tmp_path, range(6))
    pipe = flowar.Pipeline(demo, provider=provider, threads=2)
    got = pipe.generate(classes, seed=7, batch_size=3)
    assert got.dtype == np.uint8 and got.shape == (6, 32, 32, 3)
    assert np.array_equal(got, want)
    # Images 3..5 alone, as the CLI's second batch: the same pixels.
    tail = pipe.generate([pipe.class_names[c] for c in classes[3:]], seed=7, first_index=3,
                         batch_size=3)
    assert np.array_equal(tail, want[3:])
    # Another seed is another set.
    assert not np.array_equal(pipe.generate(classes[:1], seed=8), want[:1])


def test_generate_to_writes_what_the_cli_writes(demo, flowar_bin, tmp_path):
    cli_generate(flowar_bin, demo, tmp_path / "cli", "--provider", "tract", "--count", "4",
                 "--steps", "25,25,12,8", "--batch-size", "2", "--class", "1", "4")
    pipe = flowar.Pipeline(demo, provider="tract", threads=2)
    paths = pipe.generate_to(tmp_path / "py", [2, 3], [1, 4], steps=[25, 25, 12, 8],
                             batch_size=2)
    assert [os.path.basename(p) for p in paths] == ["000002.png", "000003.png"]
    for k in (2, 3):
        a, ta = flowar.read_image(tmp_path / "cli" / f"{k:06d}.png")
        b, tb = flowar.read_image(tmp_path / "py" / f"{k:06d}.png")
        assert np.array_equal(a, b)
        assert ta == tb
    assert tb["flowar:steps"] == "25,25,12,8"
    assert pipe.settings(steps="25,25,12,8")["steps"] == "25,25,12,8"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes=[5000]), "class id 5000 is out of range"),
        (dict(classes=[-1]), "class id -1"),
        (dict(classes=["no-such-shape"]), "no-such-shape"),
        (dict(classes=[]), "no images requested"),
        (dict(classes=[0], steps=0), "steps must be at least 1"),
        (dict(classes=[0], steps=[25, 25]), "one count per scale"),
        (dict(classes=[0], steps="25,x"), "25,x"),
        (dict(classes=[0], solver="rk4"), "unknown solver `rk4`"),
        (dict(classes=[0], cfg=0.5), "cfg 0.5"),
        (dict(classes=[0], guidance=2.0), "guidance 2"),
        (dict(classes=[0], first_index=-1), "first_index"),
        (dict(classes=[0], batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_raise_value_error(demo, kwargs, message):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        pipe.generate(**kwargs)


def test_bad_types_raise_type_error(demo):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    with pytest.raises(TypeError):
        pipe.generate([1.5])


def test_files_and_providers_raise_their_exceptions(demo, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        flowar.Pipeline(tmp_path / "no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(flowar.ModelError, match="manifest.json"):
        flowar.Pipeline(broken)
    with pytest.raises(flowar.ProviderUnavailable, match="no-such-lib"):
        flowar.Pipeline(demo, provider="ort-cpu", ort_lib=tmp_path / "no-such-lib.so")
    with pytest.raises(ValueError, match="unknown provider|provider"):
        flowar.Pipeline(demo, provider="quantum")
    with pytest.raises(ValueError, match="threads"):
        flowar.Pipeline(demo, threads=0)
    for cls in (flowar.ModelError, flowar.ProviderUnavailable, flowar.Cancelled):
        assert issubclass(cls, flowar.Error)


def test_a_progress_callback_returning_false_cancels(demo):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    seen = []

    def stop_at_third(p):
        seen.append((p.batch, p.batches, p.scale, p.scales, p.step, p.steps))
        return len(seen) < 3

    with pytest.raises(flowar.Cancelled):
        pipe.generate([0, 1], progress=stop_at_third)
    assert len(seen) == 3
    assert seen[0] == (0, 1, 0, 4, 1, seen[0][5]) and seen[2][4] == 3

    def fails(p):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        pipe.generate([0], progress=fails)
    # The pipeline is still usable, and None from a callback goes on.
    steps = []
    out = pipe.generate([0], progress=lambda p: steps.append(p.step))
    assert out.shape == (1, 32, 32, 3) and len(steps) > 10


def test_ctrl_c_raises_keyboard_interrupt(demo):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    calls = []

    def press_ctrl_c_once(p):
        calls.append(p)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pipe.generate([0, 1], progress=press_ctrl_c_once)
    assert len(calls) < 10


def test_the_gil_is_released_while_generating(demo):
    """A thread woken at the first progress callback runs before the last one. The switch
    interval is made so long that no thread is ever asked to give the GIL up: the other
    thread can run during generation only if generation releases the GIL itself, and with
    the GIL held it would wait for the end. No timing decides the outcome."""
    import sys

    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    woken, ran = threading.Event(), threading.Event()
    seen = []

    def other():
        woken.wait()
        ran.set()

    def progress(p):
        woken.set()
        seen.append(ran.is_set())

    t = threading.Thread(target=other)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t.start()
        pipe.generate([0, 1], progress=progress)
    finally:
        sys.setswitchinterval(interval)
        woken.set()
        t.join()
    assert len(seen) > 10 and seen[0] is False, seen[:5]
    assert seen[-1], f"the other thread did not run during {len(seen)} solver steps"


def test_convert_mirrors_the_cli(tmp_path):
    out = tmp_path / "model"
    r = flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", out)
    assert r["manifest"]["name"] == "shapes10"
    assert any("meta.json" in n for n in r["notes"])
    assert flowar.read_manifest(out)["model_hash"] == r["manifest"]["model_hash"]
    with pytest.raises(FileExistsError, match="force"):
        flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", out)
    r2 = flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", out, force=True, no_meta=True)
    assert r2["manifest"]["class_names"] == []
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        flowar.convert(tmp_path / "missing.pth", DEMO / "vae.ckpt", tmp_path / "m2")
    with pytest.raises(ValueError, match="f64"):
        flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", tmp_path / "m3", dtype="f64")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(flowar.ModelError, match="garbage.pth"):
        flowar.convert(garbage, DEMO / "vae.ckpt", tmp_path / "m4")
    assert not (tmp_path / "m4").exists()
    q = flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", tmp_path / "q8", quantize="int8")
    assert q["manifest"]["quantization"].startswith("int8")
    assert q["manifest"]["model_hash"] != r["manifest"]["model_hash"]
    with pytest.raises(ValueError, match="dtype f16"):
        flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", tmp_path / "m6", quantize="int8",
                       dtype="f16")
    with pytest.raises(ValueError, match="int4"):
        flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", tmp_path / "m7", quantize="int4")
    with pytest.raises(ValueError, match="meta or no_meta"):
        flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", tmp_path / "m5",
                       meta=DEMO / "meta.json", no_meta=True)


FIXTURES = DEMO.parent.parent / "tests" / "fixtures"


def test_convert_reads_a_diffusers_vae_folder(tmp_path):
    """A FlowAR on a FLUX-style diffusers VAE: the decode rule comes from the VAE's
    config.json, the caller's latent_shift overrides it, and a config that disagrees with
    the weights is refused naming the field, with nothing left behind."""
    fx = FIXTURES / "flux-f8c16"
    r = flowar.convert(fx / "flowar.pth", fx / "vae", tmp_path / "m")
    m = r["manifest"]
    assert (m["latent_scale"], m["latent_shift"]) == (0.3611, 0.1159)
    assert m["architecture"]["vae"]["layout"] == "diffusers"
    assert any("from the VAE's config.json" in n for n in r["notes"]), r["notes"]
    r2 = flowar.convert(fx / "flowar.pth", fx / "vae", tmp_path / "m2", latent_shift=0.0)
    assert r2["manifest"]["latent_shift"] == 0.0
    bad = tmp_path / "bad-vae"
    bad.mkdir()
    cfg = json.loads((fx / "vae" / "config.json").read_text())
    cfg["layers_per_block"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    os.symlink(fx / "vae" / "diffusion_pytorch_model.safetensors",
               bad / "diffusion_pytorch_model.safetensors")
    with pytest.raises(flowar.ModelError, match="`layers_per_block` is 2"):
        flowar.convert(fx / "flowar.pth", bad, tmp_path / "m3")
    assert not (tmp_path / "m3").exists()


def _host():
    """This host's name as flowar's temporaries record it (flowar_format::atomic_file)."""
    try:
        raw = open("/proc/sys/kernel/hostname").read()
    except OSError:
        raw = os.environ.get("HOSTNAME", "localhost")
    return "".join(c if c.isascii() and (c.isalnum() or c == ".") else "_" for c in raw.strip())


@pytest.mark.skipif(not os.path.exists("/proc/self"), reason="liveness is told from /proc")
def test_generate_to_removes_a_dead_writers_temporary_once(demo, tmp_path):
    """A temporary left by a killed writer of this host goes on the first generate_to into
    the folder; a live writer's stays; the folder is not listed again on later calls."""
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    dead = tmp_path / f".000005.png.tmp-{_host()}-4194400"
    live = tmp_path / f".000006.png.tmp-{_host()}-1"
    for p in (dead, live):
        p.write_bytes(b"half")
    pipe.generate_to(tmp_path, [0], [0], steps=2)
    assert not dead.exists() and live.exists()
    dead.write_bytes(b"half")  # planted after the folder was swept
    pipe.generate_to(tmp_path, [1], [1], steps=2)
    assert dead.exists(), "the folder was swept again"
    other = flowar.Pipeline(demo, provider="tract", threads=1)
    other.generate_to(tmp_path, [2], [2], steps=2)
    assert not dead.exists() and live.exists()


def test_read_image_refuses_a_truncated_file(demo, tmp_path):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    [path] = pipe.generate_to(tmp_path, [0], [0])
    img, text = flowar.read_image(path)
    assert img.shape == (32, 32, 3) and text["flowar:index"] == "0"
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="000000.png"):
        flowar.read_image(path)
    with pytest.raises(FileNotFoundError):
        flowar.read_image(tmp_path / "000001.png")


def test_manifest_matches_the_folder(demo):
    with open(demo / "manifest.json") as f:
        on_disk = json.load(f)
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    assert pipe.manifest["model_hash"] == on_disk["model_hash"]
    assert pipe.manifest["scales"] == on_disk["scales"]


@pytest.mark.parametrize(
    "provider,package,env_var,require",
    [
        ("ort-cpu", "onnxruntime", "ORT_DYLIB_PATH", "FLOWAR_REQUIRE_ORT"),
        ("openvino", "openvino", "OPENVINO_LIB_PATH", "FLOWAR_REQUIRE_OPENVINO"),
    ],
)
def test_this_interpreters_engine_is_found_without_its_path_variable(
    demo, provider, package, env_var, require
):
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec(package) is None:
        if os.environ.get(require) == "1":
            pytest.fail(f"{require}=1 but {package} is not installed in this interpreter")
        pytest.skip(f"{package} is not installed in this interpreter")
    env = {k: v for k, v in os.environ.items() if k != env_var}
    env["PATH"] = "/nonexistent"  # no python3 to ask either: the package must find it
    code = f"import flowar; print(flowar.Pipeline({str(demo)!r}, provider={provider!r}).provider)"
    # From `/`: no .venv below the working folder to fall back on.
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == provider


def test_a_signal_after_an_openvino_pipeline_is_dropped_is_handled(demo):
    """Dropping the last OpenVINO pipeline once unloaded its CPU plugin under its sleeping
    worker threads; the next Ctrl-C crashed the process (SIGSEGV). The core now lives as
    long as the process."""
    import subprocess
    import sys

    if not provider_available("openvino"):
        if required("FLOWAR_REQUIRE_OPENVINO"):
            pytest.fail("FLOWAR_REQUIRE_OPENVINO=1 but openvino cannot be loaded")
        pytest.skip("openvino not installed (pip install openvino)")
    code = (
        "import os, signal, flowar\n"
        f"p = flowar.Pipeline({str(demo)!r}, provider='openvino', threads=2)\n"
        "p.generate([0, 1], steps=2)\n"
        "del p\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "interrupted", (r.returncode, r.stderr)
