"""`hpcqueue estimate` on a 1M-request token trace, on two targets: with profiles and with the analytic model.

    python bench/estimate.py [--requests 1000000] [--cores 2] [--repeat 3] [--trace PATH]

The trace is the one ``bench/simulate.py`` builds (the Azure code trace resampled with jitter: hundreds of
thousands of distinct token pairs). Timed, pinned to ``--cores`` CPUs, best of ``--repeat``, the whole command
(interpreter start, CSV read, cost models, plan, report):

* ``profile``: the two targets of ``examples/paper.toml`` (an A100 and an M1 Pro with the paper's profiles,
  cross-validated for their intervals, in the derived KV-cache regime);
* ``analytic``: an H100 and an A100 80 GB target without profiles (the roofline model of llama-2-7b,
  calibrated on every shipped profile and transferred);
* ``hardware``: one class with ``--hardware h100-80g`` and no config.

Target: under 10 s on 2 cores for two targets. A prompts JSONL adds the tokenising time ``submit`` has
(``bench/ingest_plan.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, parse_with_trace, trace_parser
from simulate import generate

ANALYTIC_CONFIG = """
model = "llama-2-7b"
batch_size = 16

[targets.h100]
hardware = "h100-80g"
gpus_per_node = 8

[targets.a100]
hardware = "a100-80g"
gpus_per_node = 8
"""


def main() -> None:
    parser = trace_parser(__doc__, requests=1_000_000)
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin to (0: all)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_with_trace(parser, "trace to resample")
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.csv"
        classes = generate(trace, args.requests, source_trace=args.trace)
        print(f"trace: {args.requests:,} requests, {classes:,} distinct token pairs, {cores} cores")
        analytic = Path(tmp) / "analytic.toml"
        analytic.write_text(ANALYTIC_CONFIG)
        base = [sys.executable, "-m", "hpcqueue", "estimate", str(trace), "--json"]
        cases = {
            "profile (a100 + m1, paper.toml)": ["--config", str(REPO / "examples" / "paper.toml")],
            "analytic (h100 + a100-80g)": ["--config", str(analytic)],
            "hardware (--hardware h100-80g)": ["--hardware", "h100-80g", "--model", "llama-2-7b"],
        }
        for label, extra in cases.items():
            walls = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run([*base, *extra], check=True, capture_output=True)
                walls.append(time.perf_counter() - start)
            rows.append((label, min(walls)))
    print(f"| targets | seconds (best of {args.repeat}) |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")
    worst = max(seconds for _, seconds in rows)
    verdict = "met" if worst < 10 else "NOT met"
    print(f"\ntarget: under 10 s on 2 cores for two targets — {verdict} ({worst:.2f} s on {cores} cores)")


if __name__ == "__main__":
    main()
