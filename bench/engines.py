"""The two worker engines side by side: vLLM vs transformers, same prompts, same machine, one run.

    .venv-vllm/bin/python bench/engines.py [--batch-size 16] [--tokens 32,128]
    python bench/engines.py --vllm-python .venv-vllm/bin/python     # transformers from this interpreter

Each engine runs in a fresh process of its own (so neither inherits the other's threads or memory): it
loads the demo model in float32 on the CPU — the start-up time, imports included, is reported on its own —
warms up on two requests, then generates for every prompt of examples/prompts.jsonl with greedy decoding and
each token limit in turn, ``--repeat`` times (the fastest run is reported, with the energy metered over it).
``batch size`` is the transformers engine's generation batch and vLLM's ``max_num_seqs``. Reported per engine
and limit: generated tokens per second of generation wall time, joules per generated token from the estimate
meter over the process tree (nominal CPU power × CPU time: ESTIMATED, no energy counter is read), and the
ratio of each to the transformers engine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("transformers", "vllm")


def _child(
    engine_name: str, prompts: Path, tokens: list[int], batch_size: int, repeat: int
) -> dict[str, Any]:
    """Run in the engine's own process: load, warm up, generate for each token limit; the figures."""
    started = time.perf_counter()
    from hpcqueue.ingest import ReadOptions, parse_request, read_requests
    from hpcqueue.meters import get_meter
    from hpcqueue.models import resolve_model

    model = resolve_model("hpcqueue-demo")
    engine: Any
    if engine_name == "vllm":
        from hpcqueue.worker.vllm_engine import VllmEngine

        engine = VllmEngine(model, device="cpu", dtype="float32", batch_size=batch_size)
    else:
        from hpcqueue.worker.engine import Engine

        engine = Engine(model, device="cpu", dtype="float32", batch_size=batch_size)
    startup_s = time.perf_counter() - started

    options = ReadOptions()
    request_set = read_requests(prompts, options)
    base = []
    for line, raw in zip(request_set.table["line"], request_set.table["raw"], strict=True):
        request, _ = parse_request(json.loads(raw), request_set.format, int(line), options)
        base.append(dataclasses.replace(request, temperature=None, stop=()))
    engine.generate([dataclasses.replace(r, max_new_tokens=4) for r in base[:2]])  # warm-up

    runs = []
    for limit in tokens:
        requests = [dataclasses.replace(r, max_new_tokens=limit) for r in base]
        best: tuple[float, Any, list[dict[str, Any]]] | None = None
        for _ in range(repeat):  # the fastest run, and the energy metered over it
            meter = get_meter("estimate", hardware="cpu-generic", nominal_power_w=None)
            meter.start()
            begin = time.perf_counter()
            records = engine.generate(requests)
            elapsed_s = time.perf_counter() - begin
            measurement = meter.stop()
            if best is None or elapsed_s < best[0]:
                best = (elapsed_s, measurement, records)
        assert best is not None
        generation_s, measurement, records = best
        output_tokens = sum(int(r["output_tokens"]) for r in records)
        runs.append(
            {
                "new_tokens": limit,
                "requests": len(records),
                "errors": sum(1 for r in records if r.get("error")),
                "output_tokens": output_tokens,
                "generation_s": generation_s,
                "tokens_per_s": output_tokens / generation_s,
                "j_per_token": measurement.total_energy_j / max(output_tokens, 1),
                "energy_method": measurement.method,
                "meter": measurement.meter,
            }
        )
    return {
        "engine": engine_name,
        "version": getattr(engine, "version", None),
        "startup_s": startup_s,
        "prompts": len(base),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", default="32,128", help="token limits, comma-separated")
    parser.add_argument("--prompts", type=Path, default=REPO / "examples" / "prompts.jsonl")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per limit (the fastest is reported)"
    )
    parser.add_argument("--vllm-python", default=sys.executable, help="an interpreter with vLLM")
    parser.add_argument("--transformers-python", default=sys.executable)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.child:
        print("BENCH " + json.dumps(_child(args.child, args.prompts, tokens, args.batch_size, args.repeat)))
        return

    results = {}
    for engine, python in (("transformers", args.transformers_python), ("vllm", args.vllm_python)):
        command = [python, __file__, "--child", engine, "--tokens", args.tokens]
        command += ["--batch-size", str(args.batch_size), "--prompts", str(args.prompts)]
        command += ["--repeat", str(args.repeat)]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            sys.exit(f"the {engine} engine failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[engine] = json.loads(line.removeprefix("BENCH "))

    base = results["transformers"]
    print(
        f"engines: {base['prompts']} prompts from {args.prompts.name}, demo model, float32, CPU, greedy, "
        f"batch size {args.batch_size} (vLLM: max_num_seqs); energy ESTIMATED (estimate meter, process tree)"
    )
    print()
    print("| engine | version | start-up s |")
    print("|---|---|---:|")
    for result in results.values():
        print(f"| {result['engine']} | {result['version']} | {result['startup_s']:.1f} |")
    print()
    header = ["engine", "new tokens", "output tokens", "generation s", "tokens/s", "J/token (est.)"]
    header += ["tokens/s ratio", "J/token ratio"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for result in results.values():
        for run, ref in zip(result["runs"], base["runs"], strict=True):
            cells = [
                result["engine"],
                str(run["new_tokens"]),
                str(run["output_tokens"]),
                f"{run['generation_s']:.2f}",
                f"{run['tokens_per_s']:.0f}",
                f"{run['j_per_token']:.4f}",
                f"{run['tokens_per_s'] / ref['tokens_per_s']:.2f}x",
                f"{run['j_per_token'] / ref['j_per_token']:.2f}x",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
