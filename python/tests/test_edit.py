"""flowar.Pipeline.edit: in-painting, out-painting and variations of the editing fixture
(tests/fixtures/edit-sd-f8c4, 128x128, a diffusers VAE with its encoder) against the rules
and against `flowar edit`."""

import sys
import threading

import numpy as np
import pytest

import flowar
from conftest import EDIT, cli_edit
from pngio import read_png

# Few steps: the fixture's weights are random, and these tests check rules, not pictures.
FAST = dict(steps=4, cfg=2.5, seed=3)
LABELS = [12, 640]


@pytest.fixture(scope="module")
def pipe(edit_model):
    return flowar.Pipeline(edit_model, provider="tract", threads=2)


@pytest.fixture(scope="module")
def sources():
    """The fixture's two RGB source images, uint8 [2, 128, 128, 3]."""
    return np.stack([read_png(EDIT / f"image{i}.png") for i in range(2)])


@pytest.fixture(scope="module")
def masks():
    """Their masks, uint8 [2, 128, 128], 255 = regenerate: a centre box, the left half."""
    return np.stack([read_png(EDIT / f"mask{i}.png") for i in range(2)])


@pytest.fixture(scope="module")
def inpainted(pipe, sources, masks):
    return pipe.edit(sources, masks, labels=LABELS, **FAST)


def test_edit_with_masks_returns_one_image_per_source_and_edit(pipe, sources, masks, inpainted):
    assert inpainted.dtype == np.uint8 and inpainted.shape == (2, 128, 128, 3)
    assert inpainted.flags.c_contiguous
    # Regenerated: the masked region is not the source's.
    for i in range(2):
        assert not np.array_equal(inpainted[i][masks[i] > 0], sources[i][masks[i] > 0])
    # One image, one mask (both without the batch axis), one label for all.
    one = pipe.edit(sources[0], masks[0], labels=12, **FAST)
    assert one.shape == (1, 128, 128, 3) and np.array_equal(one[0], inpainted[0])
    # A list of images with one mask for all; count edits per image.
    both = pipe.edit([sources[0], sources[1]], masks[0], labels=12, count=2, **FAST)
    assert both.shape == (4, 128, 128, 3)


def test_composite_keeps_every_unmasked_pixel_bit_for_bit(pipe, sources, masks, inpainted):
    out = pipe.edit(sources, masks, labels=LABELS, composite=True, **FAST)
    for i in range(2):
        keep = masks[i] == 0
        assert np.array_equal(out[i][keep], sources[i][keep])
        # Under the mask it is the edit itself.
        assert np.array_equal(out[i][~keep], inpainted[i][~keep])
    # Without compositing the VAE's round trip moves kept pixels.
    assert not np.array_equal(inpainted[0][masks[0] == 0], sources[0][masks[0] == 0])


def test_invert_mask_out_paints(pipe, sources, masks, inpainted):
    out = pipe.edit(sources, masks, labels=LABELS, invert_mask=True, composite=True, **FAST)
    assert not np.array_equal(out, inpainted)
    for i in range(2):
        # Out-painting keeps what in-painting regenerates.
        inside = masks[i] > 0
        assert np.array_equal(out[i][inside], sources[i][inside])


def test_the_same_seed_reproduces_and_another_does_not(pipe, sources, masks, inpainted):
    assert np.array_equal(pipe.edit(sources, masks, labels=LABELS, **FAST), inpainted)
    other = pipe.edit(sources, masks, labels=LABELS, **dict(FAST, seed=4))
    assert not np.array_equal(other, inpainted)


def test_edits_do_not_depend_on_the_batch_size(pipe, sources, masks):
    """Edit j of image i is row i * count + j on random stream i * count + j, whatever
    the batch it runs in."""
    by_one = pipe.edit(sources, masks, labels=LABELS, count=2, batch_size=1, **FAST)
    by_two = pipe.edit(sources, masks, labels=LABELS, count=2, batch_size=2, **FAST)
    by_three = pipe.edit(sources, masks, labels=LABELS, count=2, batch_size=3, **FAST)
    assert np.array_equal(by_one, by_two) and np.array_equal(by_one, by_three)
    # The two edits of an image are two draws; the first is the count=1 edit.
    assert not np.array_equal(by_one[0], by_one[1])
    first = pipe.edit(sources, masks, labels=LABELS, **FAST)
    assert np.array_equal(by_one[0], first[0])


def test_pil_images_and_masks_equal_arrays(pipe, sources, masks, inpainted):
    Image = pytest.importorskip("PIL.Image")
    imgs = [Image.fromarray(s) for s in sources]
    pil_masks = [Image.fromarray(m) for m in masks]
    assert pil_masks[0].mode == "L"
    out = pipe.edit(imgs, pil_masks, labels=LABELS, **FAST)
    assert np.array_equal(out, inpainted)
    # A single PIL image (row 0 now); a 1-bit mask; a colour mask counts its brightest
    # channel, as `flowar edit --mask` reads a colour PNG.
    alone = pipe.edit(sources[1], masks[1], labels=640, **FAST)
    one = pipe.edit(imgs[1], pil_masks[1].convert("1"), labels=640, **FAST)
    assert np.array_equal(one, alone)
    blue = np.zeros((128, 128, 3), np.uint8)
    blue[..., 2] = masks[1]
    assert np.array_equal(pipe.edit(imgs[1], Image.fromarray(blue), labels=640, **FAST), alone)
    # An RGBA PIL image: its alpha is the mask.
    rgba = np.dstack([sources[0], 255 - masks[0]])
    out = pipe.edit(Image.fromarray(rgba), labels=12, **FAST)
    assert np.array_equal(out[0], inpainted[0])


def test_an_rgba_images_alpha_is_its_mask(pipe, sources, masks, inpainted):
    rgba = np.concatenate([sources, (255 - masks)[..., None]], axis=3)  # transparent = edit
    out = pipe.edit(rgba, labels=LABELS, composite=True, **FAST)
    for i in range(2):
        keep = masks[i] == 0
        assert np.array_equal(out[i][keep], sources[i][keep])
        assert np.array_equal(out[i][~keep], inpainted[i][~keep])
    # A mask given wins over the alpha.
    assert np.array_equal(pipe.edit(rgba, masks[::-1], labels=LABELS, **FAST),
                          pipe.edit(sources, masks[::-1], labels=LABELS, **FAST))
    # An opaque alpha is no mask: nothing to composite with.
    opaque = rgba.copy()
    opaque[..., 3] = 255
    with pytest.raises(ValueError, match="image 0 has no mask"):
        pipe.edit(opaque, labels=LABELS, composite=True, **FAST)


def test_a_mask_of_another_size_is_refused_naming_the_sizes(pipe, sources, masks):
    small = np.zeros((100, 90), np.uint8)
    with pytest.raises(ValueError, match=r"90x100 .*128x128"):
        pipe.edit(sources[0], small, labels=12, **FAST)
    with pytest.raises(ValueError, match=r"mask of edit image 1: the mask is 90x100"):
        pipe.edit(sources, [masks[0], small], labels=LABELS, **FAST)


def test_an_image_of_another_size_is_fitted_with_its_mask(pipe, sources, masks):
    """A 256x192 image is box-halved and centre-cropped to 128x128 (center_crop_arr); a
    mask of the image's size as given is fitted the same way."""
    big = np.repeat(np.repeat(sources[0], 2, axis=0), 2, axis=1)[32:224]  # 192x256
    big_mask = np.repeat(np.repeat(masks[0], 2, axis=0), 2, axis=1)[32:224]
    out = pipe.edit(big, big_mask, labels=12, composite=True, **FAST)
    assert out.shape == (1, 128, 128, 3)
    with pytest.raises(ValueError, match="256x192"):
        pipe.edit(big, masks[0][:100], labels=12, **FAST)


def test_variations_keep_the_coarse_scales(pipe, sources):
    """No mask: keep_scales=K keeps scales 0..K-1 whole; all of them is the VAE round trip,
    the same for every seed."""
    scales = len(pipe.manifest["scales"])
    a = pipe.edit(sources, keep_scales=scales, labels=LABELS, **FAST)
    b = pipe.edit(sources, keep_scales=scales, labels=LABELS, **dict(FAST, seed=9))
    assert np.array_equal(a, b)
    v = pipe.edit(sources, keep_scales=2, labels=LABELS, **FAST)
    assert not np.array_equal(v, a)
    with pytest.raises(ValueError, match=f"keep_scales {scales + 1} exceeds"):
        pipe.edit(sources, keep_scales=scales + 1, labels=LABELS, **FAST)


def test_labels_are_required_unless_unconditional(pipe, sources, masks):
    with pytest.raises(ValueError, match="give labels .* or unconditional=True"):
        pipe.edit(sources, masks, **FAST)
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        pipe.edit(sources, masks, labels=[1, 2, 3], **FAST)
    with pytest.raises(ValueError, match="not both"):
        pipe.edit(sources, masks, labels=1, unconditional=True, **FAST)
    out = pipe.edit(sources, masks, unconditional=True, steps=4)
    assert out.shape == (2, 128, 128, 3)
    # The null class is not a label: the model's classes are.
    null = pipe.manifest["null_class"]
    with pytest.raises(ValueError, match=f"class id {null} is out of range"):
        pipe.edit(sources, masks, labels=null, cfg=1.0, steps=4)
    assert not np.array_equal(out, pipe.edit(sources, masks, labels=LABELS, cfg=1.0, steps=4))
    with pytest.raises(ValueError, match="cfg must be 1"):
        pipe.edit(sources, masks, unconditional=True, cfg=2.0)
    with pytest.raises(ValueError, match="class id 5000 is out of range"):
        pipe.edit(sources, masks, labels=5000, **FAST)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s, m: dict(images=s.astype(np.float32)), TypeError, "uint8"),
        (lambda s, m: dict(images=s[..., 0]), ValueError, r"\[H, W, 3\]"),
        (lambda s, m: dict(images=s[:, :, :, :2]), ValueError, r"\[H, W, 4\]"),
        (lambda s, m: dict(images=[]), ValueError, "no images"),
        (lambda s, m: dict(images="image.png"), TypeError, "numpy array"),
        (lambda s, m: dict(images=s, masks=[m[0], m[1], m[0]]), ValueError, "3 masks for 2"),
        (lambda s, m: dict(images=s, masks=m.astype(np.float32)), TypeError, "mask 0"),
        (lambda s, m: dict(images=s, composite=True), ValueError, "has no mask"),
        (lambda s, m: dict(images=s, invert_mask=True), ValueError, "inverting the mask .out-painting. needs a mask"),
        (lambda s, m: dict(images=s, masks=m, count=0), ValueError, "count"),
        (lambda s, m: dict(images=s, masks=m, keep_scales=-1), ValueError, "keep_scales"),
        (lambda s, m: dict(images=s, masks=m, batch_size=0), ValueError, "batch_size"),
        (lambda s, m: dict(images=s, masks=m, steps=[4, 4]), ValueError, "one count per scale"),
    ],
)
def test_bad_arguments_are_refused(pipe, sources, masks, call, error, message):
    kwargs = dict(labels=LABELS, **FAST)
    kwargs.update(call(sources, masks))
    with pytest.raises(error, match=message):
        pipe.edit(**kwargs)


def test_bool_masks_are_masks(pipe, sources, masks, inpainted):
    assert np.array_equal(pipe.edit(sources, masks > 0, labels=LABELS, **FAST), inpainted)


def test_a_progress_callback_sees_every_step_and_can_cancel(pipe, sources, masks):
    seen = []
    pipe.edit(sources, masks, labels=LABELS, batch_size=1, progress=seen.append, **FAST)
    assert {(p.batch, p.batches) for p in seen} == {(0, 2), (1, 2)}
    with pytest.raises(flowar.Cancelled):
        pipe.edit(sources, masks, labels=LABELS, progress=lambda p: False, **FAST)

    def fails(p):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        pipe.edit(sources, masks, labels=LABELS, progress=fails, **FAST)


def test_the_gil_is_released_while_editing(pipe, sources, masks):
    """As test_pipeline's generate test: a thread woken at the first progress callback runs
    before the last one, with a switch interval so long that only an edit that releases the
    GIL itself lets it run."""
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
        pipe.edit(sources, masks, labels=LABELS, progress=progress, **FAST)
    finally:
        sys.setswitchinterval(interval)
        woken.set()
        t.join()
    assert len(seen) > 10 and seen[0] is False, seen[:5]
    assert seen[-1], f"the other thread did not run during {len(seen)} solver steps"


def test_a_model_without_an_encoder_says_to_convert_with_one(no_encoder_model):
    pipe = flowar.Pipeline(no_encoder_model, provider="tract", threads=1)
    size = pipe.image_size
    image = np.zeros((size, size, 3), np.uint8)
    with pytest.raises(flowar.ModelError,
                       match="no VAE encoder.*convert again with a VAE checkpoint that holds "
                             "its encoder"):
        pipe.edit(image, labels=0, steps=2)
    # It still generates.
    assert pipe.generate([0], steps=2).shape == (1, size, size, 3)


def test_edits_equal_flowar_edit(edit_model, provider, flowar_bin, sources, masks, tmp_path):
    """The pixels `flowar edit --out` writes for the fixture's files, on every CPU provider:
    two edits per image in batches of 3, composited."""
    cli_edit(flowar_bin, edit_model, tmp_path, "--provider", provider, "--threads", "2",
             "--image", str(EDIT / "image0.png"), str(EDIT / "image1.png"),
             "--mask", str(EDIT / "mask0.png"), str(EDIT / "mask1.png"),
             "--class", *map(str, LABELS), "--count", "2", "--batch-size", "3",
             "--steps", "4", "--cfg", "2.5", "--seed", "3", "--composite")
    want = np.stack([flowar.read_image(tmp_path / f"{k:06d}.png")[0] for k in range(4)])
    pipe = flowar.Pipeline(edit_model, provider=provider, threads=2)
    got = pipe.edit(sources, masks, labels=LABELS, count=2, batch_size=3, composite=True,
                    **FAST)
    assert np.array_equal(got, want)
