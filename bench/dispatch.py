"""Dispatch of a large batch to Slurm: from the plan to the last sbatch call, Slurm's own run time excluded.

    sudo slurm/local-cluster.sh start && source /tmp/hpcqueue-local-slurm/env.sh
    python bench/dispatch.py [--requests 100000] [--config examples/cluster.toml]

Generates the requests, validates, counts tokens and plans them (reported, not part of dispatch), then times
writing the batch directory (plan, per-task inputs) and submitting the job arrays plus the collect job. Jobs
are submitted held (``--hold``) so the cluster does not start running them, and are cancelled at the end.
Reports wall time, the number of sbatch calls, tasks and arrays. Target: under 5 s and a small, bounded
number of submissions (one per target per MaxArraySize tasks, plus the collect job).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_plan import generate  # noqa: E402  (the same generated workload as the ingest benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "cluster.toml")
    parser.add_argument("--task-size", type=int, default=256)
    args = parser.parse_args()

    import tomllib

    from hpcqueue import submission
    from hpcqueue.config import resolve
    from hpcqueue.dispatch.jobs import cancel_jobs
    from hpcqueue.dispatch.slurm import max_array_size
    from hpcqueue.ledger import Ledger

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.jsonl"
        generate(path, args.requests)
        # The same targets, submitted held: the cluster queues the jobs but does not run them.
        config = tomllib.loads(args.config.read_text(encoding="utf-8"))
        lines = [f"task_size = {args.task_size}", "max_new_tokens_limit = 4096"]
        for name, target in config["targets"].items():
            lines.append(f"[targets.{name}]")
            lines += [
                f"{key} = {json.dumps(value)}" for key, value in target.items() if key != "extra_sbatch"
            ]
            lines.append("extra_sbatch = { hold = true }")
        held = Path(tmp) / "held.toml"
        held.write_text("\n".join(lines) + "\n", encoding="utf-8")
        settings = resolve(
            held,
            flags={
                "batch_root": str(Path(tmp) / "batches"),
                "db_url": f"sqlite:///{Path(tmp) / 'ledger.sqlite'}",
            },
        )
        t0 = time.perf_counter()
        prepared = submission.prepare(path, settings)
        t1 = time.perf_counter()
        with Ledger(settings.db_url) as ledger:
            outcome = submission.submit(prepared, ledger)
        t2 = time.perf_counter()
        records = outcome.jobs.records
        cancel_jobs(records)

    arrays = {r["job_id"].split("_")[0] for r in records if r["task_indices"]}
    per_target = prepared.plan.tasks["target"].value_counts().to_dict()
    print(
        f"dispatch of {args.requests:,} requests, task size {args.task_size}, "
        f"MaxArraySize {max_array_size()}: "
        f"{len(prepared.plan.tasks)} tasks ({', '.join(f'{k} {v}' for k, v in per_target.items())})"
    )
    header = f"{'step':<58} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    print(f"{'ingest + tokenise + plan (before dispatch)':<58} {t1 - t0:>8.2f}")
    print(f"{'dispatch: batch dir + ledger rows + sbatch calls':<58} {t2 - t1:>8.2f}")
    print(f"sbatch calls: {outcome.jobs.sbatch_calls} ({len(arrays)} job arrays + 1 collect job)")


if __name__ == "__main__":
    main()
