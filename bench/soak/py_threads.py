"""Threads sharing ``flowar.Pipeline`` objects, run as a script so a caller can bound it
with a time limit (a deadlock then fails instead of hanging):
``python bench/soak/py_threads.py MODEL THREADS REQUESTS [PROVIDER]``.

Each of THREADS threads makes REQUESTS requests on one shared pipeline and the same
requests on a pipeline of its own. Every image must equal the one a single thread made
first. Prints one JSON line: calls, mismatches, errors, resident memory (kB) after the
sequential warm-up and at the end. ``python/tests/test_threads.py`` runs it short;
``bench/soak/README.md`` gives the long run and its figures.
"""

import json
import sys
import threading

import numpy as np

import flowar


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _request(t: int, r: int) -> dict:
    return dict(classes=[(t + r) % 10, (3 * t + r + 1) % 10], seed=1000 * t + r, steps=3)


def main(model: str, threads: int, requests: int, provider: str = "tract") -> dict:
    shared = flowar.Pipeline(model, provider=provider, threads=1)
    expected = {
        (t, r): shared.generate(**_request(t, r)) for t in range(threads) for r in range(requests)
    }
    rss_warm = _rss_kb()
    results = {}
    errors = []

    def work(t: int) -> None:
        try:
            own = flowar.Pipeline(model, provider=provider, threads=1)
            for r in range(requests):
                for name, pipe in (("shared", shared), ("own", own)):
                    results[(t, r, name)] = pipe.generate(**_request(t, r))
        except BaseException as e:  # reported, not raised: the caller counts them
            errors.append(f"thread {t}: {e!r}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    mismatches = sum(not np.array_equal(v, expected[k[:2]]) for k, v in results.items())
    return {
        "provider": provider,
        "threads": threads,
        "requests_per_thread": requests,
        "calls": len(results),
        "expected_calls": 2 * threads * requests,
        "mismatches": mismatches,
        "errors": errors,
        "rss_kb_after_warmup": rss_warm,
        "rss_kb_end": _rss_kb(),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (3, 4):
        sys.exit(__doc__)
    print(json.dumps(main(args[0], int(args[1]), int(args[2]), *args[3:])))
