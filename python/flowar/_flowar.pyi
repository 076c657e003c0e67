"""Types of flowar's native module (the Rust runtime and exporter). Use the ``flowar``
package's API; these are its building blocks."""

import os
import pathlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]
_Class = Union[int, str]
_Steps = Union[int, str, List[int], None]

__version__: str
#: The editing rule every edit's PNG text records (``flowar:edit_rule``).
EDIT_RULE: str

class Error(Exception):
    """Base class of the errors only flowar raises."""

class ModelError(Error):
    """A model folder or checkpoint is missing parts, corrupt or inconsistent."""

class ProviderUnavailable(Error):
    """The execution provider asked for (or its library) cannot be used here."""

class Cancelled(Error):
    """A progress callback returned False, so the work stopped."""

class Progress:
    """Where the sampler is, after every solver step."""

    batch: int
    batches: int
    scale: int
    scales: int
    step: int
    steps: int

class Pipeline:
    def __init__(
        self,
        model_dir: _Path,
        provider: str = "auto",
        threads: Optional[int] = None,
        gpu: Optional[Dict[str, Any]] = None,
        device_id: int = 0,
        ort_lib: Optional[_Path] = None,
        openvino_lib: Optional[_Path] = None,
    ) -> None: ...
    @property
    def manifest_json(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def provider_reason(self) -> str: ...
    @property
    def model_dir(self) -> str: ...
    def generate(
        self,
        classes: Sequence[_Class],
        indices: Sequence[int],
        seed: int,
        cfg: Optional[float],
        guidance: Optional[float],
        steps: _Steps,
        solver: str,
        batch_size: int,
        progress: Optional[Callable[[Progress], Optional[bool]]],
    ) -> Tuple[bytearray, int, int, int]: ...
    def edit(
        self,
        images: Sequence[Tuple[bytes, int, int, int]],
        masks: Sequence[Optional[Tuple[bytes, int, int]]],
        classes: Optional[Sequence[_Class]],
        keep_scales: int,
        invert_mask: bool,
        composite: bool,
        count: int,
        seed: int,
        cfg: Optional[float],
        guidance: Optional[float],
        steps: _Steps,
        solver: str,
        batch_size: int,
        progress: Optional[Callable[[Progress], Optional[bool]]],
    ) -> Tuple[bytearray, int, int, int]:
        """Edits of ``images[i] = (pixels, height, width, channels)`` (RGB8 or RGBA8) under
        ``masks[i] = (values, height, width)`` (or the alpha, or none), ``classes`` one per
        image or None (unconditional); edit ``j`` of image ``i`` is row and global image
        ``i * count + j``. Returns (RGB8 bytes, N, H, W)."""
    def edit_to(
        self,
        out_dir: _Path,
        images: Sequence[_Path],
        masks: Sequence[Optional[_Path]],
        rows: Sequence[int],
        indices: Sequence[int],
        classes: Optional[Sequence[_Class]],
        keep_scales: int,
        invert_mask: bool,
        composite: bool,
        task: Optional[str],
        seed: int,
        cfg: Optional[float],
        guidance: Optional[float],
        steps: _Steps,
        solver: str,
        batch_size: int,
        progress: Optional[Callable[[Progress], Optional[bool]]],
    ) -> List[pathlib.Path]:
        """Edits of PNG files into ``out_dir`` as ``flowar edit --out`` writes them: global
        image ``indices[r]`` edits ``images[rows[r]]`` (under ``masks[rows[r]]``, else its
        alpha); ``task`` is the set's ``flowar:edit`` (default: these images')."""
    def generate_to(
        self,
        out_dir: _Path,
        classes: Sequence[_Class],
        indices: Sequence[int],
        seed: int,
        cfg: Optional[float],
        guidance: Optional[float],
        steps: _Steps,
        solver: str,
        batch_size: int,
        progress: Optional[Callable[[Progress], Optional[bool]]],
    ) -> List[pathlib.Path]: ...

def convert(
    flowar: _Path,
    vae: _Path,
    out: _Path,
    latent_scale: Optional[float] = None,
    latent_shift: Optional[float] = None,
    meta: Optional[_Path] = None,
    no_meta: bool = False,
    weights: Optional[str] = None,
    force: bool = False,
    allow_nonfinite: bool = False,
    dtype: str = "f32",
    quantize: Optional[str] = None,
) -> Dict[str, Any]: ...
def class_ids(
    classes: Union[_Class, Sequence[_Class]], num_classes: int, class_names: List[str]
) -> List[int]: ...
def edit_inputs(
    images: Sequence[_Path],
    masks: Sequence[Optional[_Path]],
    image_size: int,
    keep_scales: int,
    invert_mask: bool,
    composite: bool,
) -> Tuple[List[Dict[str, Any]], str]:
    """Reads and checks an edit set's PNG files: per image ``{"sha256", "mask_sha256",
    "fitted_from", "has_mask"}``, and the set's ``flowar:edit``."""
def read_image(path: _Path) -> Tuple[bytearray, int, int, Dict[str, str]]: ...
def read_manifest(dir: _Path) -> str: ...
def settings(
    dir: _Path,
    seed: int,
    cfg: Optional[float],
    guidance: Optional[float],
    steps: _Steps,
    solver: str,
) -> Dict[str, str]: ...
def temp_path(path: _Path) -> pathlib.Path:
    """The temporary this process writes ``path`` through: ``.NAME.tmp-HOST-PID``."""
def sweep_stale(dir: _Path) -> List[pathlib.Path]:
    """Removes the image and ``run.json`` temporaries this host's dead processes left in
    ``dir``; returns the paths removed."""
