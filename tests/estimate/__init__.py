"""Helpers shared by the estimate tests: a profile whose points the analytic model itself produced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.estimate import KNOWN, Factors, build_model
from hpcqueue.profiles import Profile, ProfileMeta, save_profile

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"
#: Factors unlike any shipped class's, for profiles made by the model itself.
TRUE_FACTORS = Factors(
    u_compute=0.55,
    u_memory=0.75,
    overhead_s_per_layer=4e-4,
    convert_weight_reads=4.0,
    power_compute=0.6,
    power_memory=0.35,
    cpu_share=0.8,
)
INPUTS = (8, 32, 128, 512, 1024, 2048)
OUTPUTS = (8, 32, 128, 512, 1024)


def synthetic_profile(
    root: Path,
    name: str,
    *,
    hardware: str = "h100-80g",
    kv_cache: bool = True,
    batch_sizes: tuple[int, ...] = (1,),
    factors: Factors = TRUE_FACTORS,
    cpus: int = 4,
    **meta: Any,
) -> Path:
    """A measured profile of llama-2-7b in bfloat16 whose points are exactly the analytic model's (input
    sweep at 32 output tokens, output sweep at 32 prompt tokens), written to ``root``."""
    arch = KNOWN["llama-2-7b"]
    rows = []
    for batch in batch_sizes:
        model = build_model(
            arch, hardware, factors, dtype="bfloat16", kv_cache=kv_cache, batch_size=batch, cpus=cpus
        )
        sweeps = [("input", n, 32) for n in INPUTS] + [("output", 32, m) for m in OUTPUTS]
        estimate = model.predict([s[1] for s in sweeps], [s[2] for s in sweeps])
        domains = estimate.energy_by_domain_j
        for i, (sweep, n_in, n_out) in enumerate(sweeps):
            rows.append(
                {
                    "sweep": sweep,
                    "input_tokens": n_in,
                    "output_tokens": n_out,
                    "batch_size": batch,
                    "trials": 5,
                    "runtime_s_mean": estimate.runtime_s[i] * batch,
                    "runtime_s_ci95": 0.0,
                    "energy_j_mean": estimate.energy_j[i] * batch,
                    "energy_j_ci95": 0.0,
                    "energy_cpu_j_mean": domains["cpu"][i] * batch,
                    "energy_cpu_j_ci95": 0.0,
                    "energy_gpu_j_mean": domains["gpu"][i] * batch if "gpu" in domains else np.nan,
                    "energy_gpu_j_ci95": 0.0 if "gpu" in domains else np.nan,
                    "total_tokens_mean": float(n_in + n_out),
                }
            )
    fields: dict[str, Any] = {
        "name": name,
        "model": "meta-llama/Llama-2-7b-hf",
        "hardware": hardware,
        "source": "measured",
        "method": "measured",
        "kv_cache": kv_cache,
        "software": {"dtype": "bfloat16", "torch_threads": cpus, "device": "cuda"},
        **meta,
    }
    profile = Profile(meta=ProfileMeta(**fields), points=pd.DataFrame(rows))
    return save_profile(profile, root)
