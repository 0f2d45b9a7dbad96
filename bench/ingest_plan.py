"""Driver-side throughput: ingest + tokenise + plan for 100k and 1M generated requests.

    python bench/ingest_plan.py                 # sizes 100000 and 1000000
    python bench/ingest_plan.py --sizes 10000   # quicker

Each size runs in its own process so its peak RSS is its own. The input is generated first (not timed):
simple-format records whose prompt lengths follow a log-normal distribution (median ~24 words, long tail to
~600 words), one in ten a chat `messages` record, some with their own `max_new_tokens`. Planning uses two
targets with the shipped paper profiles (M1-Pro and A100 on Swing), so the threshold policy does real work.
Target: 1M requests in under 60 s on 2 cores, peak RSS under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "what",
    "up",
    "out",
    "who",
    "them",
    "some",
    "more",
    "into",
    "only",
    "energy",
    "cluster",
    "partition",
    "schedule",
    "token",
    "prompt",
    "model",
    "inference",
    "batch",
    "queue",
    "node",
    "power",
    "carbon",
    "water",
    "threshold",
    "summarise",
    "explain",
    "compare",
    "translate",
    "describe",
    "list",
    "why",
    "how",
    "write",
    "code",
    "function",
    "python",
    "slurm",
    "gpu",
    "cpu",
    "memory",
]


def generate(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            words = min(600, max(1, int(rng.lognormvariate(3.2, 0.9))))
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            record: dict[str, object]
            if i % 10 == 0:
                record = {
                    "id": f"r{i}",
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": text},
                    ],
                }
            else:
                record = {"id": f"r{i}", "prompt": text}
            if i % 3 == 0:
                record["max_new_tokens"] = rng.choice([16, 32, 64, 128, 256, 512])
            handle.write(json.dumps(record) + "\n")


def run_one(path: Path) -> dict[str, float]:
    """Runs in a child process: time each stage, report peak RSS."""
    from hpcqueue.config import Target
    from hpcqueue.ingest import ReadOptions, count_input_tokens, read_requests
    from hpcqueue.models import Tokenizer, resolve_model
    from hpcqueue.planner import make_plan, resolve_cost_models
    from hpcqueue.profiles.store import profile_search_path

    model = resolve_model("hpcqueue-demo")
    tokenizer = Tokenizer.load(model.path)
    targets = [
        Target(name="lowpower", hardware="m1-pro", profile="llama-2-7b-chat.m1-pro.wilkins2024"),
        Target(name="gpu", hardware="a100-40g", profile="llama-2-7b-chat.swing-a100.wilkins2024"),
    ]
    cost_models = resolve_cost_models(targets, model.name, profile_search_path())

    t0 = time.perf_counter()
    requests = read_requests(path, ReadOptions(max_new_tokens_limit=4096))
    t1 = time.perf_counter()
    table = requests.table
    table["input_tokens"] = count_input_tokens(tokenizer, table)
    t2 = time.perf_counter()
    plan = make_plan(table, targets, cost_models, policy="threshold", task_size=256)
    t3 = time.perf_counter()
    per_target = plan.per_target()
    return {
        "requests": len(table),
        "ingest_s": t1 - t0,
        "tokenise_s": t2 - t1,
        "plan_s": t3 - t2,
        "total_s": t3 - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tasks": len(plan.tasks),
        "lowpower_share": per_target.get("lowpower", {}).get("requests", 0) / max(1, len(table)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child)))
        return

    print(
        f"ingest + tokenise + plan  (cpus: {len(os.sched_getaffinity(0))}, python {sys.version.split()[0]})"
    )
    header = (
        f"{'requests':>10} {'MB in':>7} {'ingest s':>9} {'tokenise s':>11} {'plan s':>7} {'total s':>8} "
        f"{'req/s':>9} {'peak RSS MB':>12} {'tasks':>6} {'to lowpower':>12}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"requests-{n}.jsonl"
            generate(path, n)
            size_mb = path.stat().st_size / 1e6
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(proc.returncode)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{r['requests']:>10,} {size_mb:>7.0f} {r['ingest_s']:>9.2f} {r['tokenise_s']:>11.2f} "
                f"{r['plan_s']:>7.2f} {r['total_s']:>8.2f} {r['requests'] / r['total_s']:>9,.0f} "
                f"{r['peak_rss_mb']:>12,.0f} {r['tasks']:>6} {r['lowpower_share']:>11.1%}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
