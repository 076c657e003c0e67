"""FlowAR image generators from their released checkpoints, without PyTorch.

The runtime is flowar's Rust crate, called directly: a model folder written by
``flowar.convert`` (or ``flowar convert`` on the command line) runs on onnxruntime (CPU, CUDA,
TensorRT) or on tract, the pure-Rust CPU engine.

Image ``k`` of a set is drawn from random stream ``k`` of the seed, whatever the batch or
the machine, so a set split across processes or machines is the same set. Its pixels equal
``flowar generate``'s PNGs for the same indices and batch size; a different batch size can
move a pixel by at most one level.

>>> import flowar
>>> pipe = flowar.Pipeline("models/shapes10/converted")
>>> images = pipe.generate(["circle", "square"], seed=0)   # uint8 [2, H, W, 3]
>>> mask = np.zeros((32, 32), np.uint8); mask[8:24, 8:24] = 255   # white = regenerate
>>> edits = pipe.edit(images, mask, labels="square")      # in-paint the centre: [2, H, W, 3]

Editing (:meth:`Pipeline.edit`: in-painting, out-painting, variations) needs a model folder
converted with a VAE checkpoint that holds its encoder, as the demo's does.

Errors: ``ValueError`` for bad arguments, ``FileNotFoundError``/``OSError`` for files, and
``flowar.ModelError``, ``flowar.ProviderUnavailable`` and ``flowar.Cancelled``, subclasses
of ``flowar.Error``, for the rest.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _flowar
from ._flowar import Cancelled, Error, ModelError, Progress, ProviderUnavailable

__version__: str = _flowar.__version__

__all__ = [
    "Pipeline",
    "Progress",
    "convert",
    "read_image",
    "read_manifest",
    "settings",
    "Error",
    "ModelError",
    "ProviderUnavailable",
    "Cancelled",
]

Class = Union[int, str]
Steps = Union[int, str, Sequence[int]]
ProgressCallback = Callable[[Progress], Optional[bool]]
PathLike = Union[str, "os.PathLike[str]"]
#: An image to edit: ``uint8 [H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA), or a PIL image.
Image = Any
#: A mask: ``uint8 [H, W]`` (above 0 = regenerate) or ``bool [H, W]``, or a PIL image.
MaskImage = Any


def _images(buf: bytearray, n: int, h: int, w: int) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8).reshape(n, h, w, 3)


def _at_least(least: int, **values: int) -> None:
    """Raises ``ValueError`` naming the first of ``values`` below ``least``, before any
    work (shared by the pipeline's and ``flowar.ray``'s entry points)."""
    for name, value in values.items():
        if value < least:
            bound = "0 or more" if least == 0 else f"at least {least}"
            raise ValueError(f"{name} must be {bound}, got {value}")


def _steps(steps: Optional[Steps]) -> Any:
    if steps is None or isinstance(steps, (int, str)):
        return steps
    return [int(s) for s in steps]


def _is_pil(x: Any) -> bool:
    """Whether ``x`` is a PIL image (told without importing PIL, which is optional)."""
    return type(x).__module__.startswith("PIL.") and hasattr(x, "getbands")


def _pil_pixels(img: Any) -> np.ndarray:
    """A PIL image as ``uint8 [H, W, 3]``, or ``[H, W, 4]`` when it has transparency."""
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))


def _pil_mask(img: Any) -> np.ndarray:
    """A PIL mask as ``uint8 [H, W]``: grey as it is, colour as its brightest channel
    (as ``flowar edit --mask`` reads a colour PNG), alpha ignored."""
    if img.mode == "L":
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB")).max(axis=2)


def _items(x: Any, what: str, ndim: int) -> List[Any]:
    """One item or a batch (an array of one more dimension, or a list) as a list."""
    if isinstance(x, np.ndarray):
        if x.ndim == ndim:
            return [x]
        if x.ndim == ndim + 1:
            return list(x)
        raise ValueError(
            f"{what}: expected one array of {ndim} dimensions or a batch of {ndim + 1}, "
            f"got shape {x.shape}"
        )
    if _is_pil(x):
        return [x]
    if isinstance(x, (list, tuple)):
        return list(x)
    raise TypeError(f"{what}: expected a numpy array, a PIL image or a list of them, "
                    f"got {type(x).__name__}")


def _edit_images(images: Any) -> List[np.ndarray]:
    """Source images as contiguous ``uint8 [H, W, 3|4]`` arrays."""
    out = []
    for i, x in enumerate(_items(images, "images", 3)):
        a = _pil_pixels(x) if _is_pil(x) else np.asarray(x)
        if a.dtype != np.uint8:
            raise TypeError(f"image {i}: expected uint8 pixels, got {a.dtype}")
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(
                f"image {i}: expected [H, W, 3] (RGB) or [H, W, 4] (RGBA), got shape {a.shape}"
            )
        out.append(np.ascontiguousarray(a))
    if not out:
        raise ValueError("no images to edit")
    return out


def _edit_masks(masks: Any, n: int) -> List[Optional[np.ndarray]]:
    """Masks as contiguous ``uint8 [H, W]`` arrays (or None), one per image."""
    if masks is None:
        return [None] * n
    items = _items(masks, "masks", 2)
    if len(items) == 1:
        items = items * n
    elif len(items) != n:
        raise ValueError(
            f"{len(items)} masks for {n} images: give one mask for all images, or one per image"
        )
    out: List[Optional[np.ndarray]] = []
    for i, x in enumerate(items):
        if x is None:
            out.append(None)
            continue
        a = _pil_mask(x) if _is_pil(x) else np.asarray(x)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        if a.dtype != np.uint8:
            raise TypeError(f"mask {i}: expected uint8 (above 0 = regenerate) or bool, "
                            f"got {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"mask {i}: expected [H, W], got shape {a.shape}")
        out.append(np.ascontiguousarray(a))
    return out


def _package_lib(package: str, env_var: str, patterns: Sequence[str]) -> Optional[str]:
    """This interpreter's pip-installed library of ``package`` (found without importing
    it, which would load a second copy), unless ``env_var`` names one."""
    if os.environ.get(env_var):
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for d in (spec.submodule_search_locations or []) if spec else []:
        found: List[str] = []
        for pattern in patterns:
            found += sorted(glob.glob(os.path.join(d, pattern)))
        if found:
            return found[0]
    return None


def _onnxruntime_lib() -> Optional[str]:
    """This interpreter's onnxruntime library, unless ORT_DYLIB_PATH names one: the wheel
    ships ``capi/libonnxruntime.so*``."""
    return _package_lib(
        "onnxruntime",
        "ORT_DYLIB_PATH",
        ["capi/libonnxruntime.so*", "capi/libonnxruntime*.dylib"],
    )


def _openvino_lib() -> Optional[str]:
    """This interpreter's OpenVINO C library, unless OPENVINO_LIB_PATH names one: the wheel
    ships ``libs/libopenvino_c.so*``."""
    return _package_lib("openvino", "OPENVINO_LIB_PATH", ["libs/libopenvino_c.so*"])


class Pipeline:
    """A model folder loaded on an execution provider, ready to generate.

    Args:
        model_dir: a folder written by ``flowar.convert`` / ``flowar convert``.
        provider: ``"auto"`` (the fastest available: tensorrt, cuda, ort-cpu, else tract;
            openvino for a bfloat16 model), or one by name: ``"ort-cpu"``, ``"cuda"``,
            ``"tensorrt"``, ``"openvino"``, ``"tract"``. A named provider that cannot be
            used raises ``ProviderUnavailable``; there is no silent fallback.
        threads: intra-op threads (default: the number of cores).
        gpu: CUDA / TensorRT options as ``flowar generate --gpu`` takes them, e.g.
            ``{"mem_limit": "8GiB", "trt_fp16": True}``.
        device_id: GPU ordinal for cuda / tensorrt.
        ort_lib: path to ``libonnxruntime.so`` (default: ``ORT_DYLIB_PATH``, else this
            interpreter's ``pip install onnxruntime``; without either, ``auto`` runs on
            tract).
        openvino_lib: path to ``libopenvino_c.so`` or its folder (default:
            ``OPENVINO_LIB_PATH``, else this interpreter's ``pip install openvino``).
    """

    def __init__(
        self,
        model_dir: PathLike,
        provider: str = "auto",
        threads: Optional[int] = None,
        gpu: Optional[Dict[str, Any]] = None,
        device_id: int = 0,
        ort_lib: Optional[PathLike] = None,
        openvino_lib: Optional[PathLike] = None,
    ) -> None:
        self._native = _flowar.Pipeline(
            os.fspath(model_dir),
            provider,
            threads,
            gpu,
            device_id,
            _onnxruntime_lib() if ort_lib is None else os.fspath(ort_lib),
            _openvino_lib() if openvino_lib is None else os.fspath(openvino_lib),
        )
        self._manifest: Dict[str, Any] = json.loads(self._native.manifest_json)

    @property
    def manifest(self) -> Dict[str, Any]:
        """The model folder's manifest (architecture, scales, classes, sampler defaults)."""
        return self._manifest

    @property
    def provider(self) -> str:
        """The provider running the graphs (``auto`` resolved)."""
        return self._native.provider

    @property
    def provider_reason(self) -> str:
        """Why that provider was chosen."""
        return self._native.provider_reason

    @property
    def image_size(self) -> int:
        return int(self._manifest["image_size"])

    @property
    def num_classes(self) -> int:
        return int(self._manifest["num_classes"])

    @property
    def class_names(self) -> List[str]:
        return list(self._manifest.get("class_names", []))

    def _class_ids(self, classes: Union[Class, Sequence[Class]]) -> List[int]:
        """Ids of classes given by id or name, by the rule of ``flowar generate --class``."""
        return _flowar.class_ids(classes, self.num_classes, self.class_names)

    def __repr__(self) -> str:
        return (
            f"flowar.Pipeline({os.fspath(self._native.model_dir)!r}, "
            f"provider={self.provider!r})"
        )

    def generate(
        self,
        classes: Union[Class, Sequence[Class]],
        seed: int = 0,
        first_index: int = 0,
        cfg: Optional[float] = None,
        guidance: Optional[float] = None,
        steps: Optional[Steps] = None,
        solver: str = "euler",
        progress: Optional[ProgressCallback] = None,
        batch_size: int = 8,
    ) -> np.ndarray:
        """Generates one image per class: ``uint8`` array ``[N, H, W, 3]``.

        Image ``i`` is global image ``first_index + i`` (random stream
        ``first_index + i`` of ``seed``), so it equals ``flowar generate``'s
        ``NNNNNN.png`` of that index. ``cfg``, ``guidance`` and ``steps`` default to the
        model's; ``steps`` is one count or one per scale (``[25, 25, 20, 12, 8]`` or
        ``"25,25,20,12,8"``). ``progress`` is called with a :class:`Progress` after every
        solver step; returning ``False`` stops the run with :class:`Cancelled`, and Ctrl-C
        raises ``KeyboardInterrupt``. The GIL is released while it runs.
        """
        cl = self._class_ids(classes)
        _at_least(0, first_index=first_index)
        indices = list(range(first_index, first_index + len(cl)))
        buf, n, h, w = self._native.generate(
            cl, indices, seed, cfg, guidance, _steps(steps), solver, batch_size, progress
        )
        return _images(buf, n, h, w)

    def edit(
        self,
        images: Union[Image, Sequence[Image]],
        masks: Union[None, MaskImage, Sequence[Optional[MaskImage]]] = None,
        keep_scales: int = 0,
        labels: Union[None, Class, Sequence[Class]] = None,
        unconditional: bool = False,
        invert_mask: bool = False,
        composite: bool = False,
        count: int = 1,
        seed: int = 0,
        cfg: Optional[float] = None,
        guidance: Optional[float] = None,
        steps: Optional[Steps] = None,
        solver: str = "euler",
        batch_size: int = 8,
        progress: Optional[ProgressCallback] = None,
    ) -> np.ndarray:
        """Edits images as ``flowar edit`` does: ``uint8`` array ``[N * count, H, W, 3]``,
        edit ``j`` of image ``i`` at row ``i * count + j``.

        The source image's tokens (from the model's VAE encoder) are teacher-forced into
        the sampler, so the model regenerates only what the mask marks: in-painting (a
        mask), out-painting (``invert_mask``), class-conditional editing (in-painting with
        another label) and variations (``keep_scales=K``: the first ``K`` scales are kept
        whole, the finer ones regenerated, under the mask when there is one). Needs a model
        folder converted with a VAE that has its encoder; one without raises
        :class:`ModelError` saying how to convert one.

        - ``images``: one image or several: ``uint8`` arrays ``[H, W, 3]`` (RGB) or
          ``[H, W, 4]`` (RGBA), a batch ``[N, H, W, 3|4]``, PIL images, or a list of them.
          Another size than the model's is fitted to it (ADM's ``center_crop_arr``:
          box-halved while at least twice the size, bicubic resize of the short side,
          centre crop), so the output is the model's size.
        - ``masks``: white (any value above 0) = regenerate: ``uint8`` or ``bool``
          ``[H, W]``, a batch ``[N, H, W]``, PIL images (grey; a colour one counts its
          brightest channel), or a list of them (``None`` for an image without one); one
          for all images or one per image. A mask is its image's size as given, or the
          model's. Without one, an RGBA image's alpha is its mask (transparent =
          regenerate); an image with neither has every token regenerated from scale
          ``keep_scales`` on.
        - ``labels``: the class of the edit, by id or name: one for all images or one per
          image. ``unconditional=True`` edits without a class instead (the null class,
          ``cfg`` 1); one of the two is required.
        - ``composite``: paste the source's pixels back where the mask is 0, so the kept
          region is the input's bit for bit (needs a mask for every image).
        - ``seed``, ``cfg``, ``guidance``, ``steps``, ``solver``, ``progress``: as
          :meth:`generate`. Row ``k`` draws random stream ``k`` of ``seed`` whatever the
          batch it runs in, and its pixels equal ``flowar edit``'s ``NNNNNN.png`` of the
          same images, settings and batch size. The GIL is released while it runs.

        Bad arguments (a mask of another size, labels that do not fit) raise
        ``ValueError``, pixels that are not ``uint8`` ``TypeError``.
        """
        pixels = _edit_images(images)
        grey = _edit_masks(masks, len(pixels))
        _at_least(0, keep_scales=keep_scales)
        _at_least(1, count=count, batch_size=batch_size)
        classes = self._edit_classes(labels, unconditional, len(pixels))
        buf, n, h, w = self._native.edit(
            [(a.tobytes(), a.shape[0], a.shape[1], a.shape[2]) for a in pixels],
            [None if m is None else (m.tobytes(), m.shape[0], m.shape[1]) for m in grey],
            classes,
            keep_scales,
            invert_mask,
            composite,
            count,
            seed,
            cfg,
            guidance,
            _steps(steps),
            solver,
            batch_size,
            progress,
        )
        return _images(buf, n, h, w)

    def _edit_classes(
        self, labels: Union[None, Class, Sequence[Class]], unconditional: bool, n: int
    ) -> Optional[List[int]]:
        """One class id per image, or None for an unconditional edit."""
        if unconditional:
            if labels is not None:
                raise ValueError("give labels or unconditional=True, not both")
            return None
        if labels is None:
            raise ValueError(
                "give labels (the class of the edit, by id or name: one for all images or one "
                "per image), or unconditional=True to edit without a class"
            )
        ids = self._class_ids(labels)
        if len(ids) == 1:
            return ids * n
        if len(ids) != n:
            raise ValueError(
                f"{len(ids)} labels for {n} images: give one per image, or one for all"
            )
        return ids

    def generate_to(
        self,
        out_dir: PathLike,
        indices: Sequence[int],
        classes: Sequence[Class],
        seed: int = 0,
        cfg: Optional[float] = None,
        guidance: Optional[float] = None,
        steps: Optional[Steps] = None,
        solver: str = "euler",
        progress: Optional[ProgressCallback] = None,
        batch_size: int = 8,
    ) -> List[str]:
        """Generates the images at global ``indices`` (``classes[i]`` for ``indices[i]``)
        into ``out_dir`` as ``NNNNNN.png`` with the PNG text ``flowar generate --out``
        writes (model hash, index, class, seed, cfg, guidance, steps, solver). Returns the
        paths written. Each file is written whole (through a rename) or not at all."""
        paths = self._native.generate_to(
            os.fspath(out_dir),
            self._class_ids(classes),
            [int(i) for i in indices],
            seed,
            cfg,
            guidance,
            _steps(steps),
            solver,
            batch_size,
            progress,
        )
        return [os.fspath(p) for p in paths]

    def settings(
        self,
        seed: int = 0,
        cfg: Optional[float] = None,
        guidance: Optional[float] = None,
        steps: Optional[Steps] = None,
        solver: str = "euler",
    ) -> Dict[str, str]:
        """See :func:`settings`."""
        return settings(self._native.model_dir, seed, cfg, guidance, steps, solver)


def convert(
    flowar: PathLike,
    vae: PathLike,
    out: PathLike,
    *,
    latent_scale: Optional[float] = None,
    latent_shift: Optional[float] = None,
    meta: Optional[PathLike] = None,
    no_meta: bool = False,
    weights: Optional[str] = None,
    force: bool = False,
    allow_nonfinite: bool = False,
    dtype: str = "f32",
    quantize: Optional[str] = None,
) -> Dict[str, Any]:
    """Converts a FlowAR checkpoint (``FlowAR-{S,L,H}.pth``, a training checkpoint or
    ``.safetensors``) and a KL-VAE (MAR's ``kl16.ckpt``, another LDM-layout checkpoint, or a
    diffusers ``AutoencoderKL`` folder such as SD's or FLUX's ``vae/``) into a model folder,
    as ``flowar convert`` does with the same options:

    - ``meta``: a model card (``meta.json``); default: the one beside the FlowAR
      checkpoint unless ``no_meta``;
    - ``weights``: ``"ema"`` or ``"model"`` of a training checkpoint (default: ema when
      present);
    - ``latent_scale``, ``latent_shift``: the decode rule ``tokens / scale + shift``
      (default: the card's, else a diffusers config's ``scaling_factor`` and
      ``shift_factor``, else 0.2325 and 0);
    - ``dtype``: ``"f32"``, ``"f16"``, or ``"bf16"`` (the transformers' linears as bfloat16
      products, the rest float32, as autocast computes; runs on ``provider="openvino"`` on a
      CPU with AMX or AVX512-BF16); ``force`` replaces an existing folder;
    - ``quantize``: ``"int8"`` for the opt-in fast mode (int8 block linears in the flow head and AR, and the flow head's final adaLN; the
      outputs are no longer the reference's), not with ``dtype="f16"`` or ``"bf16"``.

    Returns ``{"out", "manifest", "ignored_keys", "notes"}``. The folder is written
    atomically: on any error (or Ctrl-C) nothing is left at ``out``.
    """
    r = dict(
        _flowar.convert(
            os.fspath(flowar),
            os.fspath(vae),
            os.fspath(out),
            latent_scale,
            latent_shift,
            None if meta is None else os.fspath(meta),
            no_meta,
            weights,
            force,
            allow_nonfinite,
            dtype,
            quantize,
        )
    )
    r["manifest"] = json.loads(r.pop("manifest_json"))
    return r


def settings(
    model_dir: PathLike,
    seed: int = 0,
    cfg: Optional[float] = None,
    guidance: Optional[float] = None,
    steps: Optional[Steps] = None,
    solver: str = "euler",
) -> Dict[str, str]:
    """The settings these arguments resolve to for a model folder (its manifest only; no
    graphs are loaded), as an image's PNG text records them: ``model``, ``model_hash``,
    ``seed``, ``cfg``, ``guidance``, ``steps``, ``solver``. Settings the model refuses
    raise ``ValueError``."""
    d = dict(
        _flowar.settings(os.fspath(model_dir), seed, cfg, guidance, _steps(steps), solver)
    )
    d.pop("steps_json")
    return d


def read_manifest(model_dir: PathLike) -> Dict[str, Any]:
    """A model folder's manifest, checked, without loading its graphs."""
    return json.loads(_flowar.read_manifest(os.fspath(model_dir)))


def read_image(path: PathLike) -> "tuple[np.ndarray, Dict[str, str]]":
    """An image ``flowar`` wrote, fully decoded: (``uint8 [H, W, 3]``, its PNG text, e.g.
    ``{"flowar:index": "7", "flowar:seed": "0", ...}``). A truncated or foreign file
    raises ``ValueError``; a missing one ``FileNotFoundError``."""
    buf, h, w, text = _flowar.read_image(os.fspath(path))
    return _images(buf, 1, h, w)[0], dict(text)
