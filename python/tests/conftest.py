"""Fixtures for the Python package's tests: the demo model converted by flowar.convert,
the editing fixture (a model with a VAE encoder) and one without an encoder, the `flowar`
CLI (built by cargo) to compare against, and which providers to run."""

import os
import subprocess
from pathlib import Path

import pytest

import flowar

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "shapes10"
FIXTURES = REPO / "tests" / "fixtures"
#: The editing fixture: 128x128, a diffusers VAE folder `vae/` with its encoder, source
#: images image0.png, image1.png and masks mask0.png (centre box), mask1.png (left half).
EDIT = FIXTURES / "edit-sd-f8c4"


def required(var: str) -> bool:
    """`FLOWAR_REQUIRE_*=1` makes a missing engine a failure, as in the Rust tests."""
    return os.environ.get(var) == "1"


def provider_available(name: str) -> bool:
    try:
        flowar.Pipeline(DEMO_CONVERTED, provider=name, threads=1)
        return True
    except flowar.ProviderUnavailable:
        return False


DEMO_CONVERTED = None  # set by the `demo` fixture


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The bundled demo model, converted here through the Python API."""
    global DEMO_CONVERTED
    out = tmp_path_factory.mktemp("demo") / "converted"
    flowar.convert(DEMO / "flowar.pth", DEMO / "vae.ckpt", out)
    DEMO_CONVERTED = out
    return out


@pytest.fixture(scope="session")
def edit_model(tmp_path_factory) -> Path:
    """The editing fixture converted here: a FlowAR on a diffusers VAE folder (`vae/`)
    that holds its encoder, so the folder can edit."""
    out = tmp_path_factory.mktemp("edit") / "converted"
    flowar.convert(EDIT / "flowar.pth", EDIT / "vae", out)
    return out


@pytest.fixture(scope="session")
def no_encoder_model(tmp_path_factory) -> Path:
    """`tests/fixtures/spatial` converted: its VAE checkpoint has no encoder, so the folder
    can generate but not edit."""
    out = tmp_path_factory.mktemp("no-encoder") / "converted"
    flowar.convert(FIXTURES / "spatial" / "flowar.pth", FIXTURES / "spatial" / "vae.ckpt", out)
    return out


@pytest.fixture(scope="session")
def flowar_bin() -> Path:
    """The `flowar` CLI of this checkout: FLOWAR_CLI when the caller just built it
    (scripts/test.sh, right after `cargo test --workspace`), else built here by cargo."""
    given = os.environ.get("FLOWAR_CLI")
    if given:
        return Path(given)
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "flowar-cli"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "flowar"


REQUIRE = {"ort-cpu": "FLOWAR_REQUIRE_ORT", "openvino": "FLOWAR_REQUIRE_OPENVINO"}


@pytest.fixture(scope="session", params=["ort-cpu", "openvino", "tract"])
def provider(request, demo) -> str:
    """Every CPU provider; onnxruntime and OpenVINO may be missing only when their
    FLOWAR_REQUIRE_* variable is not 1."""
    var = REQUIRE.get(request.param)
    if var and not provider_available(request.param):
        if required(var):
            pytest.fail(f"{var}=1 but {request.param} cannot be loaded")
        pytest.skip(f"{request.param} not installed (pip install onnxruntime openvino)")
    return request.param


def cli_generate(flowar_bin: Path, model: Path, out: Path, *args: str) -> None:
    """`flowar generate --model MODEL --out OUT ARGS...`, failing with its stderr."""
    cli_run(flowar_bin, "generate", model, out, *args)


def cli_edit(flowar_bin: Path, model: Path, out: Path, *args: str) -> None:
    """`flowar edit --model MODEL --out OUT ARGS...`, failing with its stderr."""
    cli_run(flowar_bin, "edit", model, out, *args)


def cli_run(flowar_bin: Path, command: str, model: Path, out: Path, *args: str) -> None:
    env = dict(os.environ)
    lib = flowar._onnxruntime_lib()  # this interpreter's onnxruntime, as the package uses
    if lib and "ORT_DYLIB_PATH" not in env:
        env["ORT_DYLIB_PATH"] = lib
    r = subprocess.run(
        [str(flowar_bin), command, "--model", str(model), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
