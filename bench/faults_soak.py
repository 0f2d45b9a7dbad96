"""Soak test of "nothing lost under faults": a large batch on the local Slurm cluster while workers are
SIGKILLed at random, recovered with `hpcqueue status` / `hpcqueue retry`, then checked exactly-once.

    sudo slurm/local-cluster.sh start            # the local two-partition cluster; it sets SLURM_CONF
    python bench/faults_soak.py                  # 10,000 requests, tasks of 200, 4 kills a minute
    python bench/faults_soak.py --requests 1000 --task-size 100 --kills-per-minute 6 --seed 1

The requests are tiny (a short prompt, ``max_new_tokens`` 1 or 2, the demo model ``hpcqueue-demo``). While
the batch runs, a killer thread picks a random running worker (the pid named by a task's ``lock`` file while
the lock is held and the task has no ``metrics.json``) at random moments (exponential gaps, seeded) and
SIGKILLs it, recording time, task and pid. The main loop polls ``hpcqueue status`` and runs ``hpcqueue retry``
whenever tasks are lost, until the batch completes or ``--timeout`` passes; then it checks the batch with
the fault suite's checker (``tests.faults.invariant.assert_exactly_once``) and prints a table. Everything
runs in a private temporary HOME, XDG dirs, model cache, batch root and SQLite ledger (never the user's
own). Exit status 1 when the invariant fails or the batch does not complete in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLUSTER = REPO / "examples" / "cluster.toml"


@dataclass(frozen=True)
class Kill:
    at_s: float
    task: int
    pid: int


def private_env(root: Path) -> dict[str, str]:
    """The environment of every hpcqueue command: a private HOME, XDG dirs, cache, batch root and ledger."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HPCQUEUE_")}
    env.update(
        HOME=str(root / "home"),
        XDG_CONFIG_HOME=str(root / "config-home"),
        XDG_DATA_HOME=str(root / "data-home"),
        XDG_CACHE_HOME=str(root / "cache-home"),
        HPCQUEUE_CACHE_DIR=str(root / "hq-cache"),
        HPCQUEUE_BATCH_ROOT=str(root / "batches"),
        HPCQUEUE_DB_URL=f"sqlite:///{root / 'ledger.sqlite'}",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def hq(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcqueue", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def hq_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = hq([*args, "--json"], env)
    if result.returncode != 0:
        raise RuntimeError(f"hpcqueue {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout)


def write_prompts(path: Path, n: int, rng: random.Random) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            line = {"id": f"s{i}", "prompt": f"Say {i}.", "max_new_tokens": rng.choice((1, 2))}
            handle.write(json.dumps(line) + "\n")
    return path


def running_workers(batch_dir: Path) -> dict[int, int]:
    """Each task being worked on now and its worker's pid (``<host> <pid>`` in the held lock file)."""
    from hpcqueue.dispatch.batchdir import is_locked

    found: dict[int, int] = {}
    tasks = batch_dir / "tasks"
    if not tasks.is_dir():
        return found
    for task_dir in tasks.iterdir():
        lock = task_dir / "lock"
        if (task_dir / "metrics.json").exists() or not lock.exists():
            continue
        try:
            holder = lock.read_text().split()
            if len(holder) == 2 and is_locked(lock):
                found[int(task_dir.name)] = int(holder[1])
        except (OSError, ValueError):
            continue
    return found


class Killer(threading.Thread):
    """SIGKILLs a random running worker at exponentially distributed moments (``per_minute`` on average)."""

    def __init__(
        self, batch_dir: Path, per_minute: float, seed: int, start: float, max_kills: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.batch_dir, self.per_minute, self.start_time = batch_dir, per_minute, start
        self.max_kills = max_kills
        self.rng = random.Random(seed)
        self.kills: list[Kill] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.per_minute <= 0:
            return
        while not self.stopped.wait(self.rng.expovariate(self.per_minute / 60)):
            if self.max_kills is not None and len(self.kills) >= self.max_kills:
                return  # enough faults: let the batch finish
            workers = running_workers(self.batch_dir)
            if not workers:
                continue
            task = self.rng.choice(sorted(workers))
            pid = workers[task]
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append(Kill(time.monotonic() - self.start_time, task, pid))
            print(f"  {self.kills[-1].at_s:7.1f} s  killed task {task} (pid {pid})", file=sys.stderr)


def soak(args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], bool]:
    from tests.faults.invariant import inspect_batch

    env = private_env(root)
    rng = random.Random(args.seed)
    prompts = write_prompts(root / "prompts.jsonl", args.requests, rng)
    start = time.monotonic()
    submit_args = ["--config", str(CLUSTER), "--model", "hpcqueue-demo", "--task-size", str(args.task_size)]
    submit_args += ["--batch-size", str(args.batch_size)]
    if args.policy:
        submit_args += ["--policy", args.policy]
    info = hq_json(["submit", str(prompts), *submit_args], env)
    batch_id, batch_dir = info["batch_id"], Path(info["batch_dir"])
    took = time.monotonic() - start
    print(f"submitted {batch_id}: {info.get('tasks')} tasks ({took:.1f} s)", file=sys.stderr)
    killer = Killer(batch_dir, args.kills_per_minute, args.seed, start, getattr(args, "max_kills", None))
    killer.start()
    retries = 0
    completed = False
    try:
        while time.monotonic() - start < args.timeout:
            seen = hq_json(["status", batch_id], env)
            lost = [p["task_index"] for p in seen["problems"] if p["status"] == "lost"]
            others = [p for p in seen["problems"] if p["status"] != "lost"]
            if others:
                print(f"  problems retry may not fix: {others}", file=sys.stderr)
            if seen["done"] and not seen["problems"]:
                completed = True
                break
            if lost or others:
                report = hq_json(["retry", batch_id], env)
                retries += 1
                print(
                    f"  {time.monotonic() - start:7.1f} s  retry #{retries}: tasks {sorted(lost)} "
                    f"({report.get('submitted_tasks')} submitted)",
                    file=sys.stderr,
                )
            time.sleep(args.poll)
    finally:
        killer.stopped.set()
        killer.join()
        if not completed:
            hq(["cancel", batch_id], env)
    wall = time.monotonic() - start
    hq(["status", batch_id, "--json"], env)  # bring the ledger up to date before the check
    outcome, problems = inspect_batch(prompts, batch_dir, env["HPCQUEUE_DB_URL"], complete=True)
    for line in problems[:40]:
        print(f"  INVARIANT: {line}", file=sys.stderr)
    resumed = 0
    for index in json.loads((batch_dir / "batch.json").read_text()).get("tasks", []):
        metrics_path = batch_dir / "tasks" / f"{index['task_index']:06d}" / "metrics.json"
        if metrics_path.exists() and json.loads(metrics_path.read_text()).get("n_resumed", 0) > 0:
            resumed += 1
    row = {
        "requests": args.requests,
        "tasks": info.get("tasks"),
        "kills injected": len(killer.kills),
        "retries run": retries,
        "tasks resumed": resumed,
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "pending": outcome.pending,
        "duplicates": outcome.duplicates,
        "lost": outcome.lost,
        "wall time (s)": f"{wall:.0f}",
        "exactly once": "yes" if not problems and completed else "NO",
    }
    return row, completed and not problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs the local Slurm cluster: start it with slurm/local-cluster.sh (which sets SLURM_CONF).",
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--task-size", type=int, default=200, help="Requests per task (default 200).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generation batch (default 8).")
    parser.add_argument("--policy", default=None, help="Placement policy (default: the config's, threshold).")
    parser.add_argument("--kills-per-minute", type=float, default=4.0, help="Mean SIGKILL rate (default 4).")
    parser.add_argument(
        "--max-kills", type=int, default=None, help="Stop killing after this many kills (default: never)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompts and the killer (default 0).")
    parser.add_argument("--timeout", type=float, default=1800, help="Give up after this many seconds.")
    parser.add_argument("--poll", type=float, default=5, help="Seconds between status polls (default 5).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (printed).")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        parser.error("no SLURM_CONF or no sbatch: start the local cluster with slurm/local-cluster.sh")

    root = Path(tempfile.mkdtemp(prefix="hpcqueue-soak-"))
    try:
        row, ok = soak(args, root)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nseed {args.seed}, {args.kills_per_minute:g} kills/min, tasks of {args.task_size}\n")
    width = max(len(k) for k in row)
    print(f"| {'':<{width}} | {'value':>8} |")
    print(f"|{'-' * (width + 2)}|{'-' * 9}:|")
    for key, value in row.items():
        print(f"| {key:<{width}} | {value!s:>8} |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
