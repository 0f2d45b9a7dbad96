"""Trace simulation at scale: `hpcqueue simulate` on a 1M-request trace, end to end and stage by stage.

    python bench/simulate.py [--requests 1000000] [--cores 2] [--deadline 0] [--gpu-slots 1] [--trace PATH]

Builds a trace from the Azure LLM code trace shipped in ``examples/traces/`` (``--trace``: another file with
``ContextTokens`` and ``GeneratedTokens`` columns): rows resampled with replacement and each token count
multiplied by a log-normal factor (σ = 0.25), so the trace has the Azure distribution's shape but hundreds of
thousands of distinct (prompt, output) pairs instead of 8k — the planner works per distinct pair, so this is
the hard case. Then times, pinned to ``--cores`` CPUs:

* the real command, ``hpcqueue simulate TRACE --config examples/paper.toml --json`` (interpreter start, CSV
  read, cost models, all five policies compared), best of three;
* each stage in-process: reading the CSV, grouping into classes, predicting, and each policy's routing.

Target: the command under 10 s on 2 cores. ``--deadline SECONDS`` adds a deadline, and ``--gpu-slots N`` gives
the A100 target N slots (``array_parallelism``): with enough A100 slots and a deadline shorter than the M1's
share of the work, the M1's capacity binds and the optimal policy solves a capacity-constrained assignment
(its fast path at this size).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import AZURE, REPO, parse_with_trace, trace_parser

CONFIG = REPO / "examples" / "paper.toml"


def generate(path: Path, n: int, seed: int = 0, source_trace: Path = AZURE) -> int:
    """Write an ``n``-request trace with the shape of ``source_trace`` (the Azure trace); returns its number
    of distinct pairs."""
    source = pd.read_csv(source_trace, usecols=["ContextTokens", "GeneratedTokens"]).to_numpy()
    rng = np.random.default_rng(seed)
    rows = source[rng.integers(0, len(source), n)]
    jitter = rng.lognormal(0.0, 0.25, size=rows.shape)
    tokens = np.maximum(1, np.rint(rows * jitter)).astype(np.int64)
    pd.DataFrame({"ContextTokens": tokens[:, 0], "GeneratedTokens": tokens[:, 1]}).to_csv(path, index=False)
    return len(np.unique(tokens[:, 0] << 32 | tokens[:, 1]))


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = trace_parser(__doc__, requests=1_000_000)
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin to (0: all)")
    parser.add_argument("--deadline", type=float, default=0.0, help="seconds; 0: no deadline")
    parser.add_argument("--gpu-slots", type=int, default=1, help="array_parallelism of the a100 target")
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_with_trace(parser, "trace to resample")
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    cores = len(os.sched_getaffinity(0))

    from hpcqueue.config import resolve
    from hpcqueue.planner import CostTable, Workload, resolve_cost_models, route
    from hpcqueue.planner.simulate import load_trace

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.csv"
        classes = generate(trace, args.requests, source_trace=args.trace)
        print(f"trace: {args.requests:,} requests, {classes:,} distinct token pairs, {cores} cores")

        config = Path(tmp) / "paper.toml"
        config.write_text(
            CONFIG.read_text().replace(
                'profile = "llama-2-7b-chat.swing-a100.wilkins2024"\narray_parallelism = 1',
                f'profile = "llama-2-7b-chat.swing-a100.wilkins2024"\narray_parallelism = {args.gpu_slots}',
            )
        )
        command = [sys.executable, "-m", "hpcqueue", "simulate", str(trace), "--config", str(config)]
        command.append("--json")
        if args.deadline:
            command += ["--deadline", str(args.deadline)]
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)

        settings = resolve(config, environ={})
        assert settings.targets["a100"].array_parallelism == args.gpu_slots
        targets = list(settings.targets.values())
        models = resolve_cost_models(targets, settings.model, kv_cache=None)  # as `hpcqueue simulate`
        frame, t_read = _timed(load_trace, trace)
        workload, t_group = _timed(Workload.from_tokens, frame["input_tokens"], frame["output_tokens"])
        table, t_predict = _timed(CostTable.build, workload, targets, models)
        deadline = args.deadline or None
        stages = [("read CSV (load_trace)", t_read), ("group into classes", t_group), ("predict", t_predict)]
        for policy in ("unaware", "single:a100", "single:m1", "threshold", "optimal"):
            routing, seconds = _timed(route, workload, table, policy, deadline_s=deadline)
            label = f"route {policy}"
            if routing.solver:
                label += f" ({routing.solver['method']}, gap {100 * routing.solver['gap']:.3f} %)"
            stages.append((label, seconds))

    print("| stage | seconds |")
    print("|---|---:|")
    for label, seconds in stages:
        print(f"| {label} | {seconds:.3f} |")
    label = f"**`hpcqueue simulate … --json`, whole command (best of {args.repeat})**"
    print(f"| {label} | **{min(walls):.2f}** |")
    verdict = "met" if min(walls) < 10 else "NOT met"
    print(f"\ntarget: under 10 s on 2 cores — {verdict} ({min(walls):.2f} s on {cores} cores)")


if __name__ == "__main__":
    main()
