"""Sample sets and edits across the machines of a Ray cluster.

``generate_dataset`` runs one :class:`flowar.Pipeline` per Ray actor and writes the same
``NNNNNN.png`` files (with the same PNG text) and ``run.json`` as ``flowar generate --out``.
Image ``k`` is drawn from random stream ``k`` of the seed, so the set does not depend on the
number of workers or machines, and ``flowar pack OUT_DIR --out samples.npz`` packs it for an
FID evaluator.

``edit_folder`` edits every ``NAME.png`` of a folder (in-painting under ``masks_dir/NAME.png``,
out-painting, variations) the same way, writing what ``flowar edit --out`` writes for those
images in name order.

>>> from flowar.ray import generate_dataset
>>> generate_dataset("models/flowar-s", 50_000, out_dir="samples", num_workers=8,
...                  num_gpus_per_worker=1)
>>> from flowar.ray import edit_folder
>>> edit_folder("models/flowar-s", "photos", out_dir="edits", masks_dir="masks",
...             labels="golden retriever", count=4)

Needs ``pip install ray`` (or ``flowar[ray]``). Without a running cluster (``ray.init``
was not called and ``RAY_ADDRESS`` is unset) a local one is started for the call.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import flowar

try:
    import ray
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flowar.ray needs Ray: pip install ray (or pip install 'flowar[ray]')"
    ) from e

__all__ = ["generate_dataset", "edit_folder", "class_list"]

#: The PNG text keys that must agree across one set (as ``flowar pack`` checks them).
SETTINGS = ("model_hash", "seed", "cfg", "guidance", "steps", "solver")

#: And across one set of edits (``flowar edit --out``'s keys).
EDIT_SETTINGS = SETTINGS + ("edit", "invert_mask", "keep_scales", "composite", "edit_rule")

#: Fault injection for the tests: a worker that finds this variable naming a file that
#: does not exist yet creates it and exits at once, as a crashed machine would.
_FAULT_ENV = "FLOWAR_RAY_TEST_EXIT_ONCE"

#: Fault injection for the tests: a worker that has written a batch already and finds this
#: variable naming a file that does not exist yet creates it and sends itself SIGKILL from
#: inside its next ``generate`` (at the first solver step), as the OOM killer would.
_KILL_ENV = "FLOWAR_RAY_TEST_KILL_IN_GENERATE"


def _claim(marker: Optional[str]) -> bool:
    """Whether this process is the one to act on a fault-injection marker (creating it)."""
    if not marker:
        return False
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def class_list(
    manifest: Dict[str, Any], count: int, classes: Optional[Sequence[Union[int, str]]] = None
) -> List[int]:
    """The class id of every image ``0..count-1``, by ``flowar generate``'s rule: image
    ``k`` takes ``classes[k % len(classes)]`` (a list of ``count`` classes is one per
    image). Without ``classes`` the list is every class the model names (else all of
    them), so ``count`` a multiple of that gives ``count / num_classes`` images per class:
    the ImageNet evaluation convention (50 per class for 50,000 images)."""
    names: List[str] = list(manifest.get("class_names", []))
    if classes is None:
        ids = list(range(len(names) or int(manifest["num_classes"])))
    else:
        # The rule of `flowar generate --class` and flowar.Pipeline, in the runtime.
        ids = flowar._flowar.class_ids(classes, int(manifest["num_classes"]), names)
        if not ids:
            raise ValueError("classes is empty")
    return [ids[k % len(ids)] for k in range(count)]


def _existing(
    out_dir: str,
    count: int,
    expected: Dict[str, str],
    class_of: List[int],
    keys: Sequence[str] = SETTINGS,
    per_image: Optional[Callable[[int], Dict[str, str]]] = None,
) -> Tuple[List[int], List[str]]:
    """Indices already in ``out_dir`` as complete images of these settings (``expected``'s
    ``keys``, and ``per_image(k)``'s for image ``k``), and the unreadable files
    (half-written by a dead worker), which are to be redone. An image of other settings or
    another class is an error: one folder holds one set."""
    done: List[int] = []
    unreadable: List[str] = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name.startswith(".") and ".png.tmp-" in name:
            unreadable.append(path)  # a rename that never happened
            continue
        digits = name[:-4] if name.endswith(".png") else ""
        if len(digits) < 6 or not digits.isdigit():
            continue
        k = int(digits)
        if k >= count:
            raise ValueError(
                f"{path}: image {k} is past this set's count {count}; "
                "is the folder another run's?"
            )
        try:
            _, text = flowar.read_image(path)
        except ValueError:
            unreadable.append(path)
            continue
        want = {key: expected[key] for key in keys}
        if per_image is not None:
            want.update(per_image(k))
        for key, value in want.items():
            have = text.get(f"flowar:{key}")
            if have != value:
                raise ValueError(
                    f"{path}: its {key} is {have!r}, this run's is {value!r}; "
                    "a folder holds one set (use another out_dir)"
                )
        if text.get("flowar:index") != str(k) or text.get("flowar:class") != str(class_of[k]):
            raise ValueError(
                f"{path}: it is image {text.get('flowar:index')} of class "
                f"{text.get('flowar:class')}, this run's image {k} is of class {class_of[k]}"
            )
        done.append(k)
    return done, unreadable


def _sweep(out_dir: str, unreadable: Sequence[str]) -> None:
    """Removes the half-written images :func:`_existing` found, and the temporaries
    (``.run.json.tmp-HOST-PID``, ``.NNNNNN.png.tmp-HOST-PID``) that this host's killed
    drivers and workers left, as ``flowar generate --out`` does; those of live processes
    stay."""
    for path in unreadable:
        os.remove(path)
    flowar._flowar.sweep_stale(out_dir)


@ray.remote
class _Worker:
    """One Pipeline, kept loaded for every batch this actor is given."""

    def __init__(self, model_dir: str, provider: str, threads: Optional[int], gpu: Any):
        self.pipe = flowar.Pipeline(model_dir, provider=provider, threads=threads, gpu=gpu)
        self.batches = 0

    def provider(self) -> Tuple[str, str]:
        return self.pipe.provider, self.pipe.provider_reason

    def _faults(self) -> Optional[Callable[[Any], None]]:
        """The test's fault injection: exits now, or returns a progress callback that
        SIGKILLs this process at the first solver step."""
        if _claim(os.environ.get(_FAULT_ENV)):
            os._exit(1)
        if self.batches > 0 and _claim(os.environ.get(_KILL_ENV)):
            def progress(_: Any) -> None:
                os.kill(os.getpid(), signal.SIGKILL)
            return progress
        return None

    def run(self, out_dir: str, indices: List[int], classes: List[int], sampler: Dict[str, Any]):
        progress = self._faults()
        t = time.perf_counter()
        self.pipe.generate_to(out_dir, indices, classes, progress=progress, **sampler)
        self.batches += 1
        return indices, time.perf_counter() - t

    def edit(
        self,
        out_dir: str,
        indices: List[int],
        images: List[str],
        masks: List[Optional[str]],
        rows: List[int],
        classes: Optional[List[int]],
        task: str,
        edit: Dict[str, Any],
    ):
        """Edits ``images[rows[r]]`` into global image ``indices[r]``."""
        progress = self._faults()
        t = time.perf_counter()
        self.pipe._native.edit_to(
            out_dir, images, masks, rows, indices, classes, edit["keep_scales"],
            edit["invert_mask"], edit["composite"], task, edit["seed"], edit["cfg"],
            edit["guidance"], flowar._steps(edit["steps"]), edit["solver"],
            edit["batch_size"], progress,
        )
        self.batches += 1
        return indices, time.perf_counter() - t


def _write_json_atomic(path: str, value: Dict[str, Any]) -> None:
    # Named as the runtime names its temporaries (.NAME.tmp-HOST-PID), so that the next
    # run's _sweep (or a worker's generate_to on this host) removes it if this driver is
    # killed before the rename.
    tmp = os.fspath(flowar._flowar.temp_path(path))
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


class _Ran:
    """What a run on the workers did: each started worker's (provider, reason), the
    workers that died, the seconds the workers were busy and the run's wall time."""

    def __init__(self) -> None:
        self.providers: List[Tuple[str, str]] = []
        self.failures = 0
        self.busy_s = 0.0
        self.seconds = 0.0


def _reporter(progress: Union[bool, Callable[[int, int], None]]) -> Callable[[int, int], None]:
    if callable(progress):
        return progress
    if progress:
        def report(n: int, total: int) -> None:
            print(f"flowar.ray: {n}/{total} images", file=sys.stderr, flush=True)
        return report
    return lambda n, total: None


def _run_blocks(
    model_dir: str,
    pending: Deque[List[int]],
    submit: Callable[[Any, List[int]], Any],
    *,
    provider: str,
    threads: Optional[int],
    gpu: Any,
    num_workers: int,
    num_cpus_per_worker: float,
    num_gpus_per_worker: float,
    max_worker_failures: int,
    address: Optional[str],
    report: Callable[[int, int], None],
    done: int,
    count: int,
) -> _Ran:
    """Runs every block of ``pending`` on a pool of workers (``submit(worker, block)``
    returns the task's ref), a dead worker's block again on a new worker, up to
    ``max_worker_failures`` times; raises flowar's own errors as themselves."""
    ran = _Ran()
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_ray = True
    t0 = time.perf_counter()
    workers: List[Any] = []
    try:
        def start_workers(n: int) -> List[Any]:
            new = [
                _Worker.options(
                    num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker
                ).remote(model_dir, provider, threads or max(1, int(num_cpus_per_worker)), gpu)
                for _ in range(n)
            ]
            workers.extend(new)
            try:
                # Load in parallel; a Pipeline that cannot load fails the same on every
                # worker, so stop with its error.
                ran.providers.extend(ray.get([w.provider.remote() for w in new]))
            except ray.exceptions.RayActorError as e:
                raise flowar.Error(f"a Ray worker could not load {model_dir}: {e}") from e
            return new

        idle = start_workers(min(num_workers, len(pending))) if pending else []
        in_flight: Dict[Any, Tuple[Any, List[int]]] = {}
        n_done = done
        report(n_done, count)
        while pending or in_flight:
            while pending and idle:
                w = idle.pop()
                block = pending.popleft()
                in_flight[submit(w, block)] = (w, block)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            w, block = in_flight.pop(ref)
            try:
                _, seconds = ray.get(ref)
            except ray.exceptions.RayActorError:
                ran.failures += 1
                if ran.failures > max_worker_failures:
                    raise flowar.Error(
                        f"Ray workers died {ran.failures} times (max_worker_failures="
                        f"{max_worker_failures}); the last had images {block[0]}..{block[-1]}"
                    )
                print(
                    f"flowar.ray: a worker died with images {block[0]}..{block[-1]}; "
                    "redoing them on a new worker",
                    file=sys.stderr,
                )
                pending.appendleft(block)
                idle.extend(start_workers(1))
                continue
            except ray.exceptions.RayTaskError as e:
                # flowar's own error (ValueError, flowar.Error, ...), raised as itself.
                raise e.as_instanceof_cause() from None
            ran.busy_s += seconds
            n_done += len(block)
            report(n_done, count)
            idle.append(w)
    finally:
        for w in workers:
            ray.kill(w)
        if started_ray:
            ray.shutdown()
    ran.seconds = time.perf_counter() - t0
    return ran


def _provider_of(ran: _Ran, out_dir: str) -> Tuple[str, str]:
    """The provider a run's record names: its workers', else (nothing was left to do) the
    one the run that made the images recorded."""
    if ran.providers:
        return ran.providers[0]
    try:
        with open(os.path.join(out_dir, "run.json")) as f:
            earlier = json.load(f)
        return earlier["provider"], earlier["provider_reason"]
    except (OSError, ValueError, KeyError):
        return "none", "every image was already in the folder"


def _resume(
    out_dir: str, count: int, batch_size: int, what: str, existing_args: Tuple[Any, ...]
) -> Tuple[List[int], Deque[List[int]], int]:
    """Prepares ``out_dir`` for a run of ``count`` outputs (``what``: images or edits): the
    indices already there and readable (:func:`_existing` with ``existing_args``), the
    unreadable ones removed, and the blocks left to do with their image count."""
    os.makedirs(out_dir, exist_ok=True)
    done, unreadable = _existing(out_dir, count, *existing_args)
    _sweep(out_dir, unreadable)
    pending = _pending(count, batch_size, done)
    if done:
        print(
            f"flowar.ray: resuming: {len(done)} of {count} {what} already in {out_dir}",
            file=sys.stderr,
        )
    return done, pending, sum(len(b) for b in pending)


def _record(model_dir: str, resolved: Dict[str, Any], ran: _Ran, out_dir: str,
            body: Dict[str, Any], done: Sequence[int], todo: int) -> Dict[str, Any]:
    """A run record (``run.json``): the model and provider first, then ``body`` (what the
    run made, with its settings), then the engine's counts and timings."""
    prov, reason = _provider_of(ran, out_dir)
    return {
        "model": model_dir,
        "model_name": resolved["model"],
        "model_hash": resolved["model_hash"],
        "dtype": resolved["dtype"],
        "provider": prov,
        "provider_reason": reason,
        **body,
        "engine": {"name": "ray", "workers": len(ran.providers) - ran.failures,
                   "worker_failures": ran.failures, "resumed_images": len(done),
                   "generated_images": todo},
        "timings_s": {"total": ran.seconds, "worker_busy": ran.busy_s},
    }


def _pending(count: int, batch_size: int, done: Sequence[int]) -> Deque[List[int]]:
    """Blocks of ``batch_size`` consecutive indices, as the CLI batches them, less those
    done."""
    done_set = set(done)
    pending: Deque[List[int]] = deque()
    for start in range(0, count, batch_size):
        block = [k for k in range(start, min(start + batch_size, count)) if k not in done_set]
        if block:
            pending.append(block)
    return pending


def generate_dataset(
    model_dir: str,
    count: int,
    classes: Optional[Sequence[Union[int, str]]] = None,
    seed: int = 0,
    out_dir: str = "samples",
    provider: str = "auto",
    num_workers: int = 2,
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
    threads: Optional[int] = None,
    batch_size: int = 8,
    cfg: Optional[float] = None,
    guidance: Optional[float] = None,
    steps: Optional[Union[int, str, Sequence[int]]] = None,
    solver: str = "euler",
    gpu: Optional[Dict[str, Any]] = None,
    max_worker_failures: int = 3,
    progress: Union[bool, Callable[[int, int], None]] = True,
    address: Optional[str] = None,
) -> Dict[str, Any]:
    """Generates images ``0..count-1`` into ``out_dir`` on a Ray cluster; returns the
    run record it writes as ``out_dir/run.json``.

    - Classes follow ``flowar generate``'s rule (see :func:`class_list`): image ``k`` is of
      class ``classes[k % len(classes)]``; without ``classes``, every class in turn, so
      ``count`` a multiple of the class count gives ``count / num_classes`` per class.
    - Work is split into batches of ``batch_size`` consecutive indices, as the CLI splits
      it, so the pixels equal ``flowar generate --batch-size`` of the same size. A batch
      of other images (a resumed, partly done batch) can move a pixel by one level.
    - It resumes: images already in ``out_dir`` and readable are skipped; half-written
      ones are redone. Images of other settings in ``out_dir`` are an error.
    - A worker that dies has its batch redone on a new worker, up to
      ``max_worker_failures`` times in all. Errors raised by flowar (bad settings, a
      missing provider) stop the run and are raised here.
    - Each worker is a Ray actor with ``num_cpus_per_worker`` CPUs and
      ``num_gpus_per_worker`` GPUs running ``threads`` intra-op threads (default: its
      CPUs). ``provider``, ``gpu`` are :class:`flowar.Pipeline`'s.
    - ``address``: the cluster for ``ray.init`` when Ray is not initialized yet (default:
      ``RAY_ADDRESS``, else a local cluster for this call, shut down at the end).
    - ``progress``: ``True`` prints ``done/total`` to stderr; a callable gets
      ``(done, total)`` after every batch.
    """
    flowar._at_least(1, count=count, batch_size=batch_size, num_workers=num_workers)
    model_dir = os.path.abspath(os.fspath(model_dir))
    out_dir = os.path.abspath(os.fspath(out_dir))
    manifest = flowar.read_manifest(model_dir)
    class_of = class_list(manifest, count, classes)
    resolved = flowar._flowar.settings(
        model_dir, seed, cfg, guidance, flowar._steps(steps), solver
    )
    steps_json = json.loads(resolved["steps_json"])

    done, pending, todo = _resume(
        out_dir, count, batch_size, "images", existing_args=(resolved, class_of)
    )

    sampler = dict(seed=seed, cfg=cfg, guidance=guidance, steps=steps, solver=solver,
                   batch_size=batch_size)
    ran = _run_blocks(
        model_dir, pending,
        lambda w, block: w.run.remote(out_dir, block, [class_of[k] for k in block], sampler),
        provider=provider, threads=threads, gpu=gpu, num_workers=num_workers,
        num_cpus_per_worker=num_cpus_per_worker, num_gpus_per_worker=num_gpus_per_worker,
        max_worker_failures=max_worker_failures, address=address,
        report=_reporter(progress), done=len(done), count=count,
    )
    record = _record(model_dir, resolved, ran, out_dir, {
        "classes": class_of,
        "indices": list(range(count)),
        "count": count,
        "shard": None,
        "seed": seed,
        "cfg": float(resolved["cfg"]),
        "guidance": float(resolved["guidance"]),
        "steps": steps_json,
        "solver": solver,
        "batch_size": batch_size,
        "noise_file": None,
    }, done, todo)
    _write_json_atomic(os.path.join(out_dir, "run.json"), record)
    return record


def _png_names(folder: str) -> List[str]:
    """The ``*.png`` files of a folder (hidden ones aside), sorted by name."""
    return sorted(
        n for n in os.listdir(folder)
        if n.lower().endswith(".png") and not n.startswith(".")
        and os.path.isfile(os.path.join(folder, n))
    )


def _edit_labels(
    manifest: Dict[str, Any],
    names: List[str],
    labels: Union[None, int, str, Sequence[Union[int, str]], Dict[str, Union[int, str]]],
) -> List[int]:
    """The class id of each image: one label for all, one per image (name order), or
    ``{NAME.png or NAME: label}``."""
    ids = lambda x: flowar._flowar.class_ids(  # noqa: E731
        x, int(manifest["num_classes"]), list(manifest.get("class_names", []))
    )
    if isinstance(labels, dict):
        missing = [n for n in names if n not in labels and n[:-4] not in labels]
        if missing:
            raise ValueError(
                f"labels has no label for {len(missing)} image(s): {', '.join(missing[:5])}"
            )
        return ids([labels[n] if n in labels else labels[n[:-4]] for n in names])
    got = ids(labels)
    if len(got) == 1:
        return got * len(names)
    if len(got) != len(names):
        raise ValueError(
            f"{len(got)} labels for {len(names)} images: give one for all, one per image "
            "(in name order), or a dict by file name"
        )
    return got


def edit_folder(
    model_dir: str,
    images_dir: str,
    out_dir: str = "edits",
    masks_dir: Optional[str] = None,
    labels: Union[None, int, str, Sequence[Union[int, str]], Dict[str, Union[int, str]]] = None,
    unconditional: bool = False,
    keep_scales: int = 0,
    invert_mask: bool = False,
    composite: bool = False,
    count: int = 1,
    seed: int = 0,
    provider: str = "auto",
    num_workers: int = 2,
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
    threads: Optional[int] = None,
    batch_size: int = 8,
    cfg: Optional[float] = None,
    guidance: Optional[float] = None,
    steps: Optional[Union[int, str, Sequence[int]]] = None,
    solver: str = "euler",
    gpu: Optional[Dict[str, Any]] = None,
    max_worker_failures: int = 3,
    progress: Union[bool, Callable[[int, int], None]] = True,
    address: Optional[str] = None,
) -> Dict[str, Any]:
    """Edits every ``NAME.png`` of ``images_dir`` on a Ray cluster (see
    :meth:`flowar.Pipeline.edit` for the edits themselves) into ``out_dir``; returns the
    run record it writes as ``out_dir/run.json``.

    - The images are taken in name order: edit ``j`` of the ``i``-th image is
      ``out_dir/NNNNNN.png`` of index ``i * count + j``, with the pixels, PNG text and
      ``run.json`` keys ``flowar edit --image <the images in name order> --out`` writes
      (``run.json``'s ``images`` lists each source's path, so an output's source is
      ``images[index // count]``). Each output is written whole (through a rename) or not
      at all.
    - ``masks_dir``: the mask of ``NAME.png`` is ``masks_dir/NAME.png`` (grey, white =
      regenerate, the image's size or the model's); every image needs one. Without it, an
      RGBA image's alpha is its mask. ``invert_mask`` out-paints; ``composite`` pastes the
      source back where the mask is 0; ``keep_scales`` keeps the first scales whole.
    - ``labels``: the class of the edits, by id or name: one for all, one per image (in
      name order), or a dict ``{"NAME.png" (or "NAME"): label}``; or ``unconditional=True``.
    - Every image and mask is read and checked before any work, so a bad one stops the
      run at once, naming it.
    - It resumes: edits already in ``out_dir`` and readable are skipped; half-written ones
      are redone. An edit of other settings, or of another source image or mask, in
      ``out_dir`` is an error (one folder holds one set: adding an image to
      ``images_dir`` renumbers those after it).
    - Batches, workers, dead workers, ``provider``, ``gpu``, ``address`` and ``progress``
      as :func:`generate_dataset`. Row ``k`` draws random stream ``k`` of ``seed``, so the
      edits do not depend on the number of workers.
    """
    flowar._at_least(1, count=count, batch_size=batch_size, num_workers=num_workers)
    flowar._at_least(0, keep_scales=keep_scales)
    model_dir = os.path.abspath(os.fspath(model_dir))
    images_dir = os.path.abspath(os.fspath(images_dir))
    out_dir = os.path.abspath(os.fspath(out_dir))
    manifest = flowar.read_manifest(model_dir)
    if keep_scales > len(manifest["scales"]):
        raise ValueError(
            f"keep_scales {keep_scales} exceeds the model's {len(manifest['scales'])} scales "
            f"{manifest['scales']}"
        )
    names = _png_names(images_dir)
    if not names:
        raise ValueError(f"{images_dir} holds no .png images to edit")
    if out_dir == images_dir:
        raise ValueError("out_dir is images_dir: give another out_dir for the edits")
    images = [os.path.join(images_dir, n) for n in names]
    masks: List[Optional[str]] = [None] * len(names)
    if masks_dir is not None:
        masks_dir = os.path.abspath(os.fspath(masks_dir))
        masks = [os.path.join(masks_dir, n) for n in names]
        missing = [n for n, m in zip(names, masks) if not os.path.isfile(m)]
        if missing:
            raise ValueError(
                f"{masks_dir} has no mask for {len(missing)} image(s): {', '.join(missing[:5])}"
                " (the mask of NAME.png is masks_dir/NAME.png)"
            )
    if unconditional:
        if labels is not None:
            raise ValueError("give labels or unconditional=True, not both")
        if cfg is not None and cfg != 1.0:
            raise ValueError(
                "an unconditional edit has no class: guidance has no class to steer to, so "
                "cfg must be 1 or None"
            )
        image_class = [int(manifest["null_class"])] * len(names)
        cfg = 1.0
    elif labels is None:
        raise ValueError(
            "give labels (the class of the edits, by id or name: one for all images, one per "
            "image or a dict by file name), or unconditional=True to edit without a class"
        )
    else:
        image_class = _edit_labels(manifest, names, labels)
    resolved = flowar._flowar.settings(
        model_dir, seed, cfg, guidance, flowar._steps(steps), solver
    )
    steps_json = json.loads(resolved["steps_json"])
    inputs, task = flowar._flowar.edit_inputs(
        images, masks, int(manifest["image_size"]), keep_scales, invert_mask, composite
    )
    total = len(names) * count
    class_of = [image_class[k // count] for k in range(total)]
    expected = dict(resolved, edit=task, invert_mask=str(invert_mask).lower(),
                    keep_scales=str(keep_scales), composite=str(composite).lower(),
                    edit_rule=flowar._flowar.EDIT_RULE)

    def per_image(k: int) -> Dict[str, str]:
        i = inputs[k // count]
        return {"source_sha256": i["sha256"], "mask_sha256": i["mask_sha256"]}

    done, pending, todo = _resume(
        out_dir, total, batch_size, "edits",
        existing_args=(expected, class_of, EDIT_SETTINGS, per_image),
    )

    settings = dict(keep_scales=keep_scales, invert_mask=invert_mask, composite=composite,
                    seed=seed, cfg=cfg, guidance=guidance, steps=steps, solver=solver,
                    batch_size=batch_size)

    def submit(w: Any, block: List[int]) -> Any:
        sources = sorted({k // count for k in block})
        at = {s: r for r, s in enumerate(sources)}
        return w.edit.remote(
            out_dir, block, [images[s] for s in sources], [masks[s] for s in sources],
            [at[k // count] for k in block],
            None if unconditional else [image_class[s] for s in sources], task, settings,
        )

    ran = _run_blocks(
        model_dir, pending, submit,
        provider=provider, threads=threads, gpu=gpu, num_workers=num_workers,
        num_cpus_per_worker=num_cpus_per_worker, num_gpus_per_worker=num_gpus_per_worker,
        max_worker_failures=max_worker_failures, address=address,
        report=_reporter(progress), done=len(done), count=total,
    )
    record = _record(model_dir, resolved, ran, out_dir, {
        "edit": task,
        "rule": flowar._flowar.EDIT_RULE,
        "images": [
            {"path": p, "sha256": i["sha256"],
             "fitted_from": None if i["fitted_from"] is None else list(i["fitted_from"]),
             "mask_sha256": i["mask_sha256"]}
            for p, i in zip(images, inputs)
        ],
        "masks": masks,
        "invert_mask": invert_mask,
        "keep_scales": keep_scales,
        "composite": composite,
        "classes": class_of,
        "indices": list(range(total)),
        "count": count,
        "seed": seed,
        "cfg": float(resolved["cfg"]),
        "guidance": float(resolved["guidance"]),
        "steps": steps_json,
        "solver": solver,
        "batch_size": batch_size,
        "noise_file": None,
    }, done, todo)
    _write_json_atomic(os.path.join(out_dir, "run.json"), record)
    return record
