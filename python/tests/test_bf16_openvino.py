"""bf16 through the Python API: ``flowar.convert(dtype="bf16")``, then a Pipeline on
``provider="openvino"`` whose library is given by ``openvino_lib`` alone, pixel for pixel
what the CLI makes; and the folder refused on tract."""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import flowar
from conftest import DEMO, cli_generate, required


def openvino_libs() -> str:
    """This interpreter's OpenVINO wheel's ``libs`` folder (a failure under
    FLOWAR_REQUIRE_OPENVINO when missing, a skip elsewhere)."""
    spec = importlib.util.find_spec("openvino")
    for d in (spec.submodule_search_locations or []) if spec else []:
        libs = os.path.join(d, "libs")
        if glob.glob(os.path.join(libs, "libopenvino_c.so*")):
            return libs
    if required("FLOWAR_REQUIRE_OPENVINO"):
        pytest.fail("FLOWAR_REQUIRE_OPENVINO=1 but this interpreter has no openvino wheel")
    pytest.skip("openvino is not installed in this interpreter (pip install openvino)")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "converted"
    r = flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", out, dtype="bf16")
    assert r["manifest"]["dtype"] == "bfloat16"
    return out


def test_bf16_round_trip_on_openvino_through_openvino_lib(bf16_model, flowar_bin, tmp_path):
    libs = openvino_libs()
    nowhere = tmp_path / "no-openvino-here"
    nowhere.mkdir()
    got = tmp_path / "python.npy"
    # A fresh interpreter (the library loads once per process) where only the argument can
    # find OpenVINO: no OPENVINO_LIB_PATH, no python3 on PATH, no .venv below `/`. A folder
    # without the library is refused naming it: the argument is what is used.
    code = (
        "import sys, numpy as np, flowar\n"
        "try:\n"
        f"    flowar.Pipeline({str(bf16_model)!r}, provider='openvino', openvino_lib={str(nowhere)!r})\n"
        "    sys.exit('loaded with openvino_lib naming a folder without OpenVINO')\n"
        "except flowar.ProviderUnavailable as e:\n"
        f"    assert {str(nowhere)!r} in str(e), str(e)\n"
        f"p = flowar.Pipeline({str(bf16_model)!r}, provider='openvino', openvino_lib={libs!r}, threads=2)\n"
        "imgs = p.generate([3, 7], seed=5, steps=[4, 4, 2, 2])\n"
        f"np.save({str(got)!r}, imgs)\n"
        "print(p.provider)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENVINO_LIB_PATH"}
    env["PATH"] = "/nonexistent"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/",
        timeout=300,
    )
    if r.returncode != 0 and "neither AMX nor AVX512-BF16" in r.stderr:
        if required("FLOWAR_REQUIRE_BF16"):
            pytest.fail(f"this CPU has bf16 (FLOWAR_REQUIRE_BF16=1) but OpenVINO refused: {r.stderr}")
        pytest.skip(f"no bf16 on this CPU: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "openvino"
    imgs = np.load(got)
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3)
    assert (imgs != imgs[:, :1, :1]).any(), "flat images from the bf16 model"

    # The CLI on the same folder, provider and settings: the same pixels.
    cli_generate(
        flowar_bin, bf16_model, tmp_path / "cli", "--provider", "openvino", "--threads", "2",
        "--seed", "5", "--steps", "4,4,2,2", "--class", "3", "7",
    )
    for k in range(2):
        want, text = flowar.read_image(tmp_path / "cli" / f"{k:06d}.png")
        assert np.array_equal(imgs[k], want), k
    manifest = flowar.settings(bf16_model)
    assert text["flowar:model_hash"] == manifest["model_hash"]


def test_bf16_folder_is_refused_on_tract(bf16_model):
    with pytest.raises(flowar.ProviderUnavailable, match="tract has no native bfloat16") as e:
        flowar.Pipeline(bf16_model, provider="tract")
    assert "--provider openvino" in str(e.value)
