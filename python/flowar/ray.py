"""Sample sets across the machines of a Ray cluster.

``generate_dataset`` runs one :class:`flowar.Pipeline` per Ray actor and writes the same
``NNNNNN.png`` files (with the same PNG text) and ``run.json`` as ``flowar generate --out``.
Image ``k`` is drawn from random stream ``k`` of the seed, so the set does not depend on the
number of workers or machines, and ``flowar pack OUT_DIR --out samples.npz`` packs it for an
FID evaluator.

>>> from flowar.ray import generate_dataset
>>> generate_dataset("models/flowar-s", 50_000, out_dir="samples", num_workers=8,
...                  num_gpus_per_worker=1)

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

__all__ = ["generate_dataset", "class_list"]

#: The PNG text keys that must agree across one set (as ``flowar pack`` checks them).
SETTINGS = ("model_hash", "seed", "cfg", "guidance", "steps", "solver")

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
    out_dir: str, count: int, expected: Dict[str, str], class_of: List[int]
) -> Tuple[List[int], List[str]]:
    """Indices already in ``out_dir`` as complete images of these settings, and the
    unreadable files (half-written by a dead worker), which are to be redone. An image
    of other settings or another class is an error: one folder holds one set."""
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
        for key in SETTINGS:
            have = text.get(f"flowar:{key}")
            if have != expected[key]:
                raise ValueError(
                    f"{path}: its {key} is {have!r}, this run's is {expected[key]!r}; "
                    "a folder holds one set (use another out_dir)"
                )
        if text.get("flowar:index") != str(k) or text.get("flowar:class") != str(class_of[k]):
            raise ValueError(
                f"{path}: it is image {text.get('flowar:index')} of class "
                f"{text.get('flowar:class')}, this run's image {k} is of class {class_of[k]}"
            )
        done.append(k)
    return done, unreadable


@ray.remote
class _Worker:
    """One Pipeline, kept loaded for every batch this actor is given."""

    def __init__(self, model_dir: str, provider: str, threads: Optional[int], gpu: Any):
        self.pipe = flowar.Pipeline(model_dir, provider=provider, threads=threads, gpu=gpu)
        self.batches = 0

    def provider(self) -> Tuple[str, str]:
        return self.pipe.provider, self.pipe.provider_reason

    def run(self, out_dir: str, indices: List[int], classes: List[int], sampler: Dict[str, Any]):
        if _claim(os.environ.get(_FAULT_ENV)):
            os._exit(1)
        progress = None
        if self.batches > 0 and _claim(os.environ.get(_KILL_ENV)):
            def progress(_: Any) -> None:
                os.kill(os.getpid(), signal.SIGKILL)
        t = time.perf_counter()
        self.pipe.generate_to(out_dir, indices, classes, progress=progress, **sampler)
        self.batches += 1
        return indices, time.perf_counter() - t


def _write_json_atomic(path: str, value: Dict[str, Any]) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


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
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    model_dir = os.path.abspath(os.fspath(model_dir))
    out_dir = os.path.abspath(os.fspath(out_dir))
    manifest = flowar.read_manifest(model_dir)
    class_of = class_list(manifest, count, classes)
    resolved = flowar._flowar.settings(
        model_dir, seed, cfg, guidance, flowar._steps(steps), solver
    )
    steps_json = json.loads(resolved["steps_json"])

    os.makedirs(out_dir, exist_ok=True)
    done, unreadable = _existing(out_dir, count, resolved, class_of)
    for path in unreadable:
        os.remove(path)
    done_set = set(done)
    pending: Deque[List[int]] = deque()
    for start in range(0, count, batch_size):
        block = [k for k in range(start, min(start + batch_size, count)) if k not in done_set]
        if block:
            pending.append(block)
    todo = sum(len(b) for b in pending)
    report: Callable[[int, int], None]
    if callable(progress):
        report = progress
    elif progress:
        def report(n: int, total: int) -> None:
            print(f"flowar.ray: {n}/{total} images", file=sys.stderr, flush=True)
    else:
        def report(n: int, total: int) -> None:
            pass
    if done:
        print(
            f"flowar.ray: resuming: {len(done)} of {count} images already in {out_dir}",
            file=sys.stderr,
        )

    sampler = dict(seed=seed, cfg=cfg, guidance=guidance, steps=steps, solver=solver,
                   batch_size=batch_size)
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_ray = True
    t0 = time.perf_counter()
    providers: List[Tuple[str, str]] = []
    busy_s = 0.0
    failures = 0
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
                providers.extend(ray.get([w.provider.remote() for w in new]))
            except ray.exceptions.RayActorError as e:
                raise flowar.Error(f"a Ray worker could not load {model_dir}: {e}") from e
            return new

        idle = start_workers(min(num_workers, len(pending))) if pending else []
        in_flight: Dict[Any, Tuple[Any, List[int]]] = {}
        n_done = len(done)
        report(n_done, count)
        while pending or in_flight:
            while pending and idle:
                w = idle.pop()
                block = pending.popleft()
                ref = w.run.remote(out_dir, block, [class_of[k] for k in block], sampler)
                in_flight[ref] = (w, block)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            w, block = in_flight.pop(ref)
            try:
                _, seconds = ray.get(ref)
            except ray.exceptions.RayActorError:
                failures += 1
                if failures > max_worker_failures:
                    raise flowar.Error(
                        f"Ray workers died {failures} times (max_worker_failures="
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
            busy_s += seconds
            n_done += len(block)
            report(n_done, count)
            idle.append(w)
    finally:
        for w in workers:
            ray.kill(w)
        if started_ray:
            ray.shutdown()
    total = time.perf_counter() - t0
    if providers:
        prov, reason = providers[0]
    else:
        # Nothing was generated: keep what the run that made the images recorded.
        try:
            with open(os.path.join(out_dir, "run.json")) as f:
                earlier = json.load(f)
            prov, reason = earlier["provider"], earlier["provider_reason"]
        except (OSError, ValueError, KeyError):
            prov, reason = "none", "every image was already in the folder"
    record: Dict[str, Any] = {
        "model": model_dir,
        "model_name": resolved["model"],
        "model_hash": resolved["model_hash"],
        "dtype": resolved["dtype"],
        "provider": prov,
        "provider_reason": reason,
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
        "engine": {"name": "ray", "workers": len(providers) - failures, "worker_failures": failures,
                   "resumed_images": len(done), "generated_images": todo},
        "timings_s": {"total": total, "worker_busy": busy_s},
    }
    _write_json_atomic(os.path.join(out_dir, "run.json"), record)
    return record
