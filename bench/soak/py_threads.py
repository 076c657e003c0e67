"""Threads sharing ``flowar.Pipeline`` objects, run as a script so a caller can bound it
with a time limit (a deadlock then fails instead of hanging):
``python bench/soak/py_threads.py MODEL THREADS REQUESTS [PROVIDERS]``, PROVIDERS a
comma-separated list (default ``ort-cpu,openvino,tract``).

On each provider in turn, each of THREADS threads makes REQUESTS requests (two images,
one batch each, 3 steps) on one shared pipeline and the same requests on a pipeline of
its own, all threads starting together. Every image must equal the one a single thread
made first. Every call passes a progress callback that counts its steps; on the shared
pipeline it also notes, in one list, which call each step belonged to, in the order the
steps ran: calls on one pipeline run one at a time, so each call's steps must form one
unbroken run there.

Prints one JSON line per provider: calls that returned, mismatches, errors, how many
calls saw how many progress steps, the shared pipeline's calls whose steps were
interleaved with another call's and those that waited for the call before them (proof
that the calls met), and resident memory (kB) after the sequential warm-up and at the
end. ``python/tests/test_threads.py`` runs it short; ``bench/soak/README.md`` gives the
long run and its figures.
"""

import json
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

import numpy as np

import flowar

PROVIDERS = "ort-cpu,openvino,tract"


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _request(t: int, r: int) -> dict:
    # batch_size 1: two batches a call, so a pipeline lock held per batch instead of per
    # call would show as another call's steps between them.
    return dict(
        classes=[(t + r) % 10, (3 * t + r + 1) % 10], seed=1000 * t + r, steps=3, batch_size=1
    )


def _interleaved(order: List[Any]) -> int:
    """How many calls' steps do not form one unbroken run in ``order``."""
    runs = Counter(k for i, k in enumerate(order) if i == 0 or order[i - 1] != k)
    return sum(n > 1 for n in runs.values())


def _waited(order: List[Any], spans: Dict[Any, Tuple[float, float]]) -> int:
    """How many calls began before the call whose steps ran just before theirs ended."""
    ran = [k for k in dict.fromkeys(order) if k in spans]
    return sum(spans[cur][0] < spans[prev][1] for prev, cur in zip(ran, ran[1:]))


def main(model: str, threads: int, requests: int, provider: str = "tract") -> dict:
    shared = flowar.Pipeline(model, provider=provider, threads=1)
    expected = {
        (t, r): shared.generate(**_request(t, r)) for t in range(threads) for r in range(requests)
    }
    rss_warm = _rss_kb()
    results = {}
    steps_seen: Dict[Tuple[int, int, str], int] = {}
    shared_order: List[Tuple[int, int]] = []  # appended under the GIL, so in step order
    spans: Dict[Tuple[int, int], Tuple[float, float]] = {}
    errors = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            own = flowar.Pipeline(model, provider=provider, threads=1)
        except BaseException as e:  # reported, not raised: the caller counts them
            errors.append(f"thread {t}: {e!r}")
            start.abort()
            return
        try:
            start.wait()
            for r in range(requests):
                for name, pipe in (("shared", shared), ("own", own)):
                    key = (t, r, name)
                    steps_seen[key] = 0

                    def progress(_: Any, key=key) -> None:
                        steps_seen[key] += 1
                        if key[2] == "shared":
                            shared_order.append(key[:2])

                    began = time.monotonic()
                    results[key] = pipe.generate(**_request(t, r), progress=progress)
                    if name == "shared":
                        spans[(t, r)] = (began, time.monotonic())
        except BaseException as e:
            errors.append(f"thread {t}: {e!r}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    mismatches = sum(not np.array_equal(v, expected[k[:2]]) for k, v in results.items())
    per_call = Counter(steps_seen[k] for k in results)
    return {
        "provider": provider,
        "threads": threads,
        "requests_per_thread": requests,
        "calls": len(results),
        "mismatches": mismatches,
        "errors": errors,
        # {steps: calls}: how many calls saw that many progress callbacks.
        "progress_steps_per_call": {str(n): c for n, c in sorted(per_call.items())},
        "shared_interleaved": _interleaved(shared_order),
        "shared_waited": _waited(shared_order, spans),
        "rss_kb_after_warmup": rss_warm,
        "rss_kb_end": _rss_kb(),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (3, 4):
        sys.exit(__doc__)
    for p in (args[3] if len(args) == 4 else PROVIDERS).split(","):
        print(json.dumps(main(args[0], int(args[1]), int(args[2]), p)), flush=True)
