"""Cost models: fitting a shipped profile and predicting energy and runtime for many requests at once.

    python bench/cost_models.py                              # 10k, 100k and 1M requests, two paper profiles
    python bench/cost_models.py --sizes 1000000 --repeat 5 --profiles llama-2-7b-chat.swing-a100.wilkins2024

Random requests, prompts of 1 to 7,999 tokens and outputs of 1 to 3,999 (seed 0, as the planner sees a large
trace before grouping), predicted with ``CostModel.predict`` on the shipped Wilkins et al. profiles: integer
token counts, and the same counts as floats (another code path, the same numbers). Each time is the best of
``--repeat`` after one warm-up call; "fit" is ``CostModel.from_profile`` once. Target: 1M requests (integer
counts) predicted in under 0.2 s per profile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

PROFILES = ("llama-2-7b-chat.swing-a100.wilkins2024", "llama-2-7b-chat.m1-pro.wilkins2024")
TARGET_REQUESTS = 1_000_000
TARGET_S = 0.2


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, TARGET_REQUESTS])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), help="shipped profile names")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from hpcqueue.planner.costs import CostModel
    from hpcqueue.profiles import find_profile

    print(
        f"cost-model prediction (cpus: {len(os.sched_getaffinity(0))}, python {sys.version.split()[0]}, "
        f"best of {args.repeat})\n"
    )
    print("| profile | form | fit ms | requests | predict ms (int) | predict ms (float) | M requests/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    verdicts = []
    for name in args.profiles:
        profile = find_profile(name)
        start = time.perf_counter()
        model = CostModel.from_profile(profile)
        fit_ms = 1000 * (time.perf_counter() - start)
        for size in args.sizes:
            rng = np.random.default_rng(0)
            n = rng.integers(1, 8000, size)
            m = rng.integers(1, 4000, size)
            as_float = n.astype(float) + 0.0
            int_s = best_of(partial(model.predict, n, m), args.repeat)
            float_s = best_of(partial(model.predict, as_float, m), args.repeat)
            print(
                f"| {name} | {model.form} | {fit_ms:.1f} | {size:,} | {1000 * int_s:.1f} | "
                f"{1000 * float_s:.1f} | {size / int_s / 1e6:.1f} |"
            )
            if size == TARGET_REQUESTS:
                verdicts.append((name, int_s))
    if verdicts:
        print(f"\ntarget: {TARGET_REQUESTS:,} requests (integer counts) predicted in under {TARGET_S} s")
    for name, seconds in verdicts:
        print(f"- {name}: {'met' if seconds < TARGET_S else 'NOT met'} ({seconds:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
