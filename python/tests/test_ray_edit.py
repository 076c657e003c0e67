"""flowar.ray.edit_folder on a local 2-CPU Ray cluster: a folder of images edited under a
folder of masks into the files `flowar edit --out` writes, with Pipeline.edit's pixels;
resuming, and a folder of other edits refused."""

import json
import os
import shutil

import numpy as np
import pytest

import flowar
from conftest import EDIT, cli_edit
from pngio import read_png

ray = pytest.importorskip("ray") if os.environ.get("FLOWAR_REQUIRE_RAY") != "1" else __import__("ray")
import flowar.ray as fray  # noqa: E402

NAMES = ["a-bird.png", "b-boat.png"]  # name order: image0, then image1
LABELS = {"a-bird": 12, "b-boat.png": 640}
COUNT = 2
SETTINGS = dict(steps=4, cfg=2.5, seed=3)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """images/ and masks/ holding the fixture's files under NAMES (and a file that is not
    a PNG, which is ignored)."""
    d = tmp_path_factory.mktemp("edit-folders")
    for sub in ("images", "masks"):
        (d / sub).mkdir()
    for i, name in enumerate(NAMES):
        shutil.copy(EDIT / f"image{i}.png", d / "images" / name)
        shutil.copy(EDIT / f"mask{i}.png", d / "masks" / name)
    (d / "images" / "notes.txt").write_text("not an image")
    return d / "images", d / "masks"


def run(model, folders, out, **kw):
    images, masks = folders
    args = dict(masks_dir=masks, labels=LABELS, count=COUNT, composite=True, out_dir=out,
                provider="tract", num_workers=2, batch_size=3, progress=False, **SETTINGS)
    args.update(kw)
    return fray.edit_folder(model, images, **args)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_edit_folder_writes_pipeline_edits_as_flowar_edit_does(
    cluster, edit_model, folders, flowar_bin, tmp_path
):
    out = tmp_path / "ray"
    record = run(edit_model, folders, out)
    total = len(NAMES) * COUNT
    assert listing(out) == [f"{k:06d}.png" for k in range(total)] + ["run.json"]
    assert record["engine"]["generated_images"] == total and record["engine"]["workers"] == 2
    got = np.stack([flowar.read_image(out / f"{k:06d}.png")[0] for k in range(total)])
    # Pipeline.edit of the same images (edit j of image i is row i * COUNT + j).
    pipe = flowar.Pipeline(edit_model, provider="tract", threads=2)
    want = pipe.edit(
        [read_png(EDIT / f"image{i}.png") for i in range(2)],
        [read_png(EDIT / f"mask{i}.png") for i in range(2)],
        labels=[12, 640], count=COUNT, batch_size=3, composite=True, **SETTINGS,
    )
    assert np.array_equal(got, want)
    # The files `flowar edit --out` writes for the images in name order: pixels and text.
    images, masks = folders
    cli = tmp_path / "cli"
    cli_edit(flowar_bin, edit_model, cli, "--provider", "tract", "--threads", "1",
             "--image", *[str(images / n) for n in NAMES],
             "--mask", *[str(masks / n) for n in NAMES], "--class", "12", "640",
             "--count", str(COUNT), "--batch-size", "3", "--composite",
             "--steps", "4", "--cfg", "2.5", "--seed", "3")
    for k in range(total):
        a, ta = flowar.read_image(out / f"{k:06d}.png")
        b, tb = flowar.read_image(cli / f"{k:06d}.png")
        assert np.array_equal(a, b) and ta == tb, k
    assert tb["flowar:edit"] == "inpaint" and tb["flowar:composite"] == "true"
    cli_run = json.loads((cli / "run.json").read_text())
    ray_run = json.loads((out / "run.json").read_text())
    assert ray_run == record
    for key in ("model_hash", "edit", "rule", "images", "invert_mask", "keep_scales",
                "composite", "classes", "indices", "count", "seed", "cfg", "guidance", "steps",
                "batch_size"):
        assert ray_run[key] == cli_run[key], key


def test_edit_folder_resumes_and_refuses_other_edits(cluster, edit_model, folders, tmp_path):
    out = tmp_path / "set"
    first = run(edit_model, folders, out, num_workers=1)
    pixels = {k: flowar.read_image(out / f"{k:06d}.png")[0] for k in range(4)}
    os.remove(out / "000001.png")
    (out / "000002.png").write_bytes((out / "000002.png").read_bytes()[:40])
    kept = {k: os.stat(out / f"{k:06d}.png").st_mtime_ns for k in (0, 3)}
    again = run(edit_model, folders, out)
    assert again["engine"]["resumed_images"] == 2 and again["engine"]["generated_images"] == 2
    assert {k: os.stat(out / f"{k:06d}.png").st_mtime_ns for k in (0, 3)} == kept
    # Redone in smaller batches: the same pixels (an edit's noise is its index's).
    for k in range(4):
        assert np.array_equal(flowar.read_image(out / f"{k:06d}.png")[0], pixels[k]), k
    assert again["images"] == first["images"]
    # Other settings, other masks, other sources: refused, nothing written.
    with pytest.raises(ValueError, match=r"000000.png: its seed is '3', this run's is '4'"):
        run(edit_model, folders, out, seed=4)
    with pytest.raises(ValueError, match="its edit is 'inpaint', this run's is 'outpaint'"):
        run(edit_model, folders, out, invert_mask=True)
    images, masks = folders
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for i, name in enumerate(NAMES):
        shutil.copy(masks / NAMES[1 - i], swapped / name)
    with pytest.raises(ValueError, match="its mask_sha256 is"):
        run(edit_model, folders, out, masks_dir=swapped)
    assert listing(out) == [f"{k:06d}.png" for k in range(4)] + ["run.json"]


def test_edit_folder_checks_its_inputs_before_any_work(
    cluster, edit_model, no_encoder_model, folders, tmp_path
):
    images, masks = folders
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="give labels"):
        fray.edit_folder(edit_model, images, out_dir=out, progress=False)
    with pytest.raises(ValueError, match="no label for 1 image"):
        run(edit_model, folders, out, labels={"a-bird": 1})
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        run(edit_model, folders, out, labels=[1, 2, 3])
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(masks / NAMES[0], partial / NAMES[0])
    with pytest.raises(ValueError, match=f"no mask for 1 image.*{NAMES[1]}"):
        run(edit_model, folders, out, masks_dir=partial)
    small = tmp_path / "small"
    small.mkdir()
    for name in NAMES:
        shutil.copy(masks / name, small / name)
    from pngio import write_png
    write_png(small / NAMES[1], np.zeros((50, 60), np.uint8))
    with pytest.raises(ValueError, match=f"{NAMES[1]}: the mask is 60x50"):
        run(edit_model, folders, out, masks_dir=small)
    with pytest.raises(ValueError, match="composite .* has no mask"):
        run(edit_model, folders, out, masks_dir=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .png images"):
        run(edit_model, (empty, masks), out)
    assert not out.exists() or not any(out.iterdir())
    # A folder without an encoder: the workers' error, saying how to convert one.
    with pytest.raises(flowar.ModelError, match="holds its encoder"):
        run(no_encoder_model, folders, tmp_path / "x", masks_dir=None, composite=False,
            labels=0, cfg=None)
