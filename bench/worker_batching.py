"""Worker throughput: length-bucketed batched generation vs one prompt at a time, same prompts, one run.

    python bench/worker_batching.py [--batch-size 16] [--max-batch-tokens 8192] [--repeat 2]

Uses the demo model on the CPU and the prompts of examples/prompts.jsonl (17 to ~2000 prompt tokens), greedy
decoding with every request given the same token limit, so both paths produce the same outputs and do the same
work. Three workloads, because the gain from batching depends on how much of the work is decoding:

- ``examples, 32 new``: every prompt, 32 new tokens — prefill-heavy (a few long prompts dominate);
- ``examples, 128 new``: every prompt, 128 new tokens — decode-heavy, like chat answers;
- ``short prompts, 64 new``: the prompts of at most 128 tokens, 64 new tokens — the short-query workload of
  the hybrid-cluster paper.

Reports generated tokens per second for each path and their ratio. Target: batched ≥ 5× one-at-a-time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _timed(engine: Any, requests: list[Any], repeat: int) -> tuple[float, list[dict[str, Any]]]:
    best, outputs = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = engine.generate(requests)
        best = min(best, time.perf_counter() - start)
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (best is reported)")
    parser.add_argument("--prompts", type=Path, default=REPO / "examples" / "prompts.jsonl")
    args = parser.parse_args()

    import torch

    from hpcqueue.ingest import ReadOptions, count_input_tokens, parse_request, read_requests
    from hpcqueue.models import Tokenizer, resolve_model
    from hpcqueue.worker.engine import Engine

    options = ReadOptions()
    request_set = read_requests(args.prompts, options)
    model = resolve_model("hpcqueue-demo")
    counts = count_input_tokens(Tokenizer.load(model.path), request_set.table)
    base = []
    for line, raw in zip(request_set.table["line"], request_set.table["raw"], strict=True):
        request, _ = parse_request(json.loads(raw), request_set.format, int(line), options)
        base.append(dataclasses.replace(request, temperature=None, stop=()))

    def limit(requests: list[Any], n: int) -> list[Any]:
        return [dataclasses.replace(r, max_new_tokens=n) for r in requests]

    short = [r for r, n in zip(base, counts, strict=True) if n <= 128]
    workloads = [
        ("examples, 32 new", limit(base, 32)),
        ("examples, 128 new", limit(base, 128)),
        (f"short prompts ({len(short)}), 64 new", limit(short, 64)),
    ]
    print(
        f"worker batching: {len(base)} prompts from {args.prompts.name} "
        f"({int(counts.min())}-{int(counts.max())} tokens), greedy, batch {args.batch_size} / max "
        f"{args.max_batch_tokens} padded tokens vs batch 1; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} cpus"
    )
    batched = Engine(model, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    single = Engine(model, batch_size=1, max_batch_tokens=None)
    batched.generate(limit(base[:4], 4))  # warm-up: allocator, kernels
    single.generate(limit(base[:2], 4))

    header = (
        f"{'workload':<30} {'tokens':>7} {'batched s':>10} {'tok/s':>7} {'one-by-one s':>13} {'tok/s':>7} "
        f"{'ratio':>6} {'same outputs':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, requests in workloads:
        seconds_b, outputs_b = _timed(batched, requests, args.repeat)
        seconds_1, outputs_1 = _timed(single, requests, args.repeat)
        tokens = sum(o["output_tokens"] or 0 for o in outputs_b)
        same = sum(a["text"] == b["text"] for a, b in zip(outputs_b, outputs_1, strict=True))
        ratio = seconds_1 / seconds_b  # same tokens on both paths, so the time ratio is the tokens/s ratio
        print(
            f"{name:<30} {tokens:>7,} {seconds_b:>10.2f} {tokens / seconds_b:>7,.0f} {seconds_1:>13.2f} "
            f"{tokens / seconds_1:>7,.0f} {ratio:>5.1f}x {same:>6}/{len(requests)}"
        )


if __name__ == "__main__":
    main()
