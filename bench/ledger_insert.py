"""Ledger writes: recording a batch of N requests (one row each), and collecting its tasks.

    python bench/ledger_insert.py                       # SQLite in a temp dir, 100k and 1M requests
    python bench/ledger_insert.py --url postgresql+psycopg://postgres@127.0.0.1:15432/hpcqueue_test

On PostgreSQL each run uses a private schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tasks are planned as the ledger tests plan theirs


def _frames(n: int, task_size: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tests.ledger import tasks_of

    rng = np.random.default_rng(3)
    task_index = np.arange(n) // task_size
    requests = pd.DataFrame(
        {
            "line": np.arange(1, n + 1),
            "id": [f"r{i}" for i in range(n)],
            "target": np.where(task_index % 2 == 0, "gpu", "lowpower"),
            "task_index": task_index,
            "input_tokens": rng.integers(8, 2048, n),
            "max_new_tokens": rng.integers(8, 512, n),
            "predicted_energy_j": rng.random(n) * 100,
            "predicted_runtime_s": rng.random(n) * 10,
            "extrapolated": rng.random(n) < 0.05,
        }
    )
    return tasks_of(requests, "slurm"), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--url", help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from hpcqueue.ledger import BatchInfo, Ledger

    header = f"{'backend':<12} {'requests':>10} {'record_batch s':>15} {'rows/s':>10} {'batch_report s':>15}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        tasks, requests = _frames(n)
        with tempfile.TemporaryDirectory() as tmp:
            schema = None
            if args.url:
                schema = f"hpcq_bench_{uuid.uuid4().hex[:10]}"
                admin = create_engine(args.url)
                with admin.begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
                url_text = url.render_as_string(hide_password=False)
            else:
                url_text = f"sqlite:///{Path(tmp) / 'ledger.sqlite'}"
            try:
                ledger = Ledger(url_text)
                info = BatchInfo(
                    id="hq-bench",
                    created_at=time.time(),
                    user="bench",
                    host="bench",
                    input_path="bench.jsonl",
                    input_sha256="0" * 64,
                    input_format="simple",
                    model="hpcqueue-demo",
                    policy="threshold",
                    settings_json="{}",
                    batch_dir=tmp,
                )
                start = time.perf_counter()
                ledger.record_batch(info, tasks, requests)
                recorded = time.perf_counter() - start
                start = time.perf_counter()
                ledger.batch_report("hq-bench")
                report = time.perf_counter() - start
                ledger.close()
            finally:
                if schema:
                    with admin.begin() as conn:
                        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                    admin.dispose()
        backend = make_url(url_text).get_backend_name()
        print(f"{backend:<12} {n:>10,} {recorded:>15.2f} {n / recorded:>10,.0f} {report:>15.2f}")


if __name__ == "__main__":
    main()
