"""Meter overhead: what metering costs next to one ``generate`` call of the demo model.

    python bench/meter_overhead.py [--calls 12] [--prompts-per-call 16] [--new-tokens 32] [--pairs 2000]

Two measurements:

1. start/stop cost: ``--pairs`` start()+stop() pairs of each meter on an idle process, in microseconds
   per pair. The NVML meters use the NVML stub of the tests (no GPU needed), the RAPL meter a temporary
   powercap tree, so these are the costs of our code plus file reads, not of a real driver call.
2. overhead on generation: ``--calls`` calls of ``Engine.generate`` on the same prompts (one batch per
   call), with no meter, with the estimate meter, and with the NVML power-sampling meter at 50 ms (a
   background thread sampling the stub's power) — each generation batch metered, as the worker does.
   Prompts of at most 128 tokens. The modes are interleaved call by call so that drift of the machine
   hits them alike; the median and the fastest call of each mode are compared with the unmetered ones
   (on a busy machine the fastest call is the steadier figure). Target: under 1 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the NVML stub and the powercap fake live with the tests


def _pairs_us(make: Callable[[], Any], pairs: int) -> float:
    meter = make()
    meter.start()
    meter.stop()  # warm-up
    start = time.perf_counter()
    for _ in range(pairs):
        meter.start()
        meter.stop()
    return (time.perf_counter() - start) / pairs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=12, help="generate calls per mode")
    parser.add_argument("--prompts-per-call", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=2000, help="start/stop pairs per meter")
    parser.add_argument("--prompts", type=Path, default=REPO / "examples" / "prompts.jsonl")
    args = parser.parse_args()

    import torch

    from hpcqueue.ingest import ReadOptions, count_input_tokens, parse_request, read_requests
    from hpcqueue.meters import devices, nvml, rapl
    from hpcqueue.meters.estimate import EstimateMeter
    from hpcqueue.models import Tokenizer, resolve_model
    from hpcqueue.worker.engine import Engine
    from tests.fakes.nvml_stub import FakeGpu, FakeNvml, uuid
    from tests.fakes.powercap import FakePowercap, make_topology

    cpus = len(os.sched_getaffinity(0))
    sampled_stub = FakeNvml([FakeGpu(uuid(0), energy_mj=None, power_mw=250_000)])
    counter_stub = FakeNvml([FakeGpu(uuid(0), energy_mj=0)])
    all_gpus = devices.GpuSelection("all", None)
    sampled = nvml.probe(sampled_stub, all_gpus)
    counted = nvml.probe(counter_stub, all_gpus)

    with tempfile.TemporaryDirectory() as tmp:
        powercap = FakePowercap(Path(tmp) / "powercap")
        powercap.add_package(0)
        sysfs = make_topology(Path(tmp) / "sys", dict.fromkeys(range(cpus), 0))
        found_rapl = rapl.probe(powercap.root, frozenset(range(cpus)), sysfs_root=sysfs)
        assert found_rapl.packages is not None
        makers: list[tuple[str, Callable[[], Any]]] = [
            ("estimate", lambda: EstimateMeter(10.0 * cpus, cpus)),
            ("rapl (fake powercap, 2 zones)", lambda: rapl.RaplMeter(found_rapl.zones, found_rapl.packages)),
            ("nvml energy counter (stub)", lambda: nvml.build_nvml_meter(counted)),
            (
                "nvml power sampling 50 ms (stub)",
                lambda: nvml.build_nvml_meter(sampled, sample_interval_s=0.05),
            ),
        ]
        print(f"meter start/stop cost, {args.pairs} pairs each, idle process, {cpus} cpus")
        print(f"{'meter':<36} {'us per start+stop':>18}")
        print("-" * 55)
        for name, make in makers:
            print(f"{name:<36} {_pairs_us(make, args.pairs):>18.1f}")

    request_set = read_requests(args.prompts, ReadOptions())
    requests = []
    for line, raw in zip(request_set.table["line"], request_set.table["raw"], strict=True):
        request, _ = parse_request(json.loads(raw), request_set.format, int(line), ReadOptions())
        requests.append(
            dataclasses.replace(request, temperature=None, stop=(), max_new_tokens=args.new_tokens)
        )
    model = resolve_model("hpcqueue-demo")
    counts = count_input_tokens(Tokenizer.load(model.path), request_set.table)
    requests = [r for r, n in zip(requests, counts, strict=True) if n <= 128][: args.prompts_per_call]
    engine = Engine(model, batch_size=len(requests), max_batch_tokens=None)
    engine.generate(requests)  # warm-up

    modes: list[tuple[str, Callable[[], Any] | None]] = [
        ("no meter", None),
        ("estimate", lambda: EstimateMeter(10.0 * cpus, cpus)),
        ("nvml power sampling 50 ms (stub)", lambda: nvml.build_nvml_meter(sampled, sample_interval_s=0.05)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in modes}
    for _ in range(args.calls):
        for name, make in modes:
            start = time.perf_counter()
            engine.generate(requests, make_meter=make)
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["no meter"])
    print()
    print(
        f"generate overhead: {args.calls} interleaved calls per mode, {len(requests)} prompts x "
        f"{args.new_tokens} new tokens per call (one batch), demo model, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    best = min(times["no meter"])
    print(f"{'mode':<36} {'median s':>9} {'overhead':>9} {'min s':>7} {'overhead':>9}")
    print("-" * 74)
    for name, _ in modes:
        median, fastest = statistics.median(times[name]), min(times[name])
        print(
            f"{name:<36} {median:>9.3f} {(median / base - 1) * 100:>8.2f}% "
            f"{fastest:>7.3f} {(fastest / best - 1) * 100:>8.2f}%"
        )


if __name__ == "__main__":
    main()
