"""Worker throughput: length-bucketed batched generation vs one prompt at a time, same prompts, one run.

    python bench/worker_batching.py [--batch-size 16] [--max-new-tokens 32] [--repeat 2]

Uses the demo model on the CPU and the prompts of examples/prompts.jsonl (every prompt gets the same token
limit, greedy decoding, so both paths produce the same outputs and do the same work). Reports generated
tokens per second for each path and their ratio. Target: batched ≥ 5× one-at-a-time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (best is reported)")
    parser.add_argument("--prompts", type=Path, default=REPO / "examples" / "prompts.jsonl")
    args = parser.parse_args()

    import torch

    from hpcqueue.engine import Engine
    from hpcqueue.models import resolve_model
    from hpcqueue.requests import ReadOptions, parse_request, read_requests

    options = ReadOptions()
    request_set = read_requests(args.prompts, options)
    requests = []
    for line, raw in zip(request_set.table["line"], request_set.table["raw"], strict=True):
        request, _ = parse_request(json.loads(raw), request_set.format, int(line), options)
        requests.append(dataclasses.replace(request, max_new_tokens=args.max_new_tokens, temperature=None))

    model = resolve_model("hpcqueue-demo")
    print(
        f"worker batching: {len(requests)} prompts from {args.prompts.name}, max_new_tokens "
        f"{args.max_new_tokens}, greedy, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cpus {len(os.sched_getaffinity(0))}"
    )

    results = {}
    for batch_size in (args.batch_size, 1):
        engine = Engine(model, batch_size=batch_size)
        engine.generate(requests[:2])  # warm-up: allocator, kernels
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            outputs = engine.generate(requests)
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        tokens = sum(o["output_tokens"] or 0 for o in outputs)
        results[batch_size] = {"seconds": best, "tokens": tokens, "texts": [o["text"] for o in outputs]}

    same = sum(a == b for a, b in zip(results[args.batch_size]["texts"], results[1]["texts"], strict=True))
    header = f"{'path':<28} {'seconds':>8} {'gen. tokens':>12} {'tokens/s':>9}"
    print(header)
    print("-" * len(header))
    for batch_size, label in (
        (args.batch_size, f"batched (batch {args.batch_size})"),
        (1, "one prompt at a time"),
    ):
        r = results[batch_size]
        print(f"{label:<28} {r['seconds']:>8.2f} {r['tokens']:>12,} {r['tokens'] / r['seconds']:>9,.0f}")
    ratio = (results[args.batch_size]["tokens"] / results[args.batch_size]["seconds"]) / (
        results[1]["tokens"] / results[1]["seconds"]
    )
    print(f"ratio batched / one-at-a-time: {ratio:.1f}x   (identical outputs: {same}/{len(requests)})")
    sys.exit(0)


if __name__ == "__main__":
    main()
