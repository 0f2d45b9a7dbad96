"""Profiles derived from the published measurements of Wilkins, Keshav and Mortier (2024).

The paper ("Hybrid Heterogeneous Clusters Can Lower the Energy Consumption of LLM Inference
Workloads", e-Energy/E2DC 2024) measured the runtime and CPU/GPU energy of Falcon, Llama-2 and
Mistral 7B on an M1-Pro laptop, two A100 systems and a V100 system, over an input-token sweep and an
output-token sweep. Its authors published the raw rows (``all-input-stats.csv``,
``all-output-stats.csv``) without a licence; the profiles made here are derived from those
published measurements and carry the citation in their metadata.

Two things are derived here:

* :func:`derive` turns the rows into one profile per (system, model): per bucket the mean, 95 %
  t-interval half-width and trial count of runtime and energy. Warm-up runs are dropped by
  ``Iteration == 0``.
* :func:`paper_energy_per_token_table` reproduces the paper's own pooled energy-per-token table,
  **with the paper's filter**: its scripts drop every row whose ``Phase`` contains the character
  ``0``. That drops the warm-up (iteration 0) but also iterations 10, 20, … and, in the output
  sweep, the 1024/2048/4096-token buckets entirely. It exists so the paper's numbers can be checked;
  the profiles do not use that filter.

Regenerate the shipped files with ``python -m hpcqueue.profiles.wilkins2024 DATA_DIR OUT_DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hpcqueue.errors import InputError, InputIssue
from hpcqueue.profiles.store import (
    POINT_COLUMNS,
    Profile,
    ProfileMeta,
    Sweep,
    ci95_half_width,
    save_profile,
)

INPUT_FILE = "all-input-stats.csv"
OUTPUT_FILE = "all-output-stats.csv"
SOURCE_REPOSITORY = "https://github.com/grantwilkins/energy-inference"
SOURCE_COMMIT = "5c2cfa4"
CITATION = (
    "Grant Wilkins, Srinivasan Keshav, Richard Mortier. Hybrid Heterogeneous Clusters Can Lower the "
    "Energy Consumption of LLM Inference Workloads. In Proceedings of the 15th ACM International "
    "Conference on Future and Sustainable Energy Systems (e-Energy '24), E2DC workshop, 2024. "
    "doi:10.1145/3632775.3662830"
)
LICENCE_NOTE = (
    "Derived from the authors' published measurements (no licence stated in the source repository); "
    "cite the paper when using these numbers."
)

_COLUMNS = {
    "phase": "Phase",
    "runtime": "Runtime (s)",
    "cpu": "CPU Energy (J)",
    "gpu": "GPU Energy (J)",
    "input": "Number of Input Tokens",
    "iteration": "Iteration",
    "model": "Model",
    "total": "Total Number of Tokens",
    "system": "System",
    "gpu_total_mb": "GPU Total Memory (MB)",
}
_SWEEP_COLUMN = {"input": "Output Token Limit", "output": "Number of Output Tokens"}


@dataclass(frozen=True)
class _Metering:
    """How the authors measured a system's energy: the meter of each device, and what idle power they took
    off (per device, and in words)."""

    meters: dict[str, str]
    idle_subtracted: dict[str, bool]
    idle_subtraction: str


@dataclass(frozen=True)
class _System:
    """One system of the paper's data: ``short`` names it in profile names, ``hardware`` is its hardware
    class; ``cpu_model`` and ``gpu_name`` go into the profiles' fingerprint and ``notes`` into their notes."""

    short: str
    hardware: str
    metering: _Metering
    cpu_model: str | None
    gpu_name: str
    notes: str


_NVML = "NVIDIA NVML energy counter of the one GPU used, read through pyJoules"
_NO_IDLE = "nothing subtracted: the figures include the devices' idle power"


def _nvml_metering(cpu_meter: str, cpu_idle_subtracted: bool, idle_subtraction: str) -> _Metering:
    """The metering of a host with one NVIDIA GPU: the CPU by ``cpu_meter``, the GPU by NVML with nothing
    subtracted."""
    return _Metering(
        meters={"cpu": cpu_meter, "gpu": _NVML},
        idle_subtracted={"cpu": cpu_idle_subtracted, "gpu": False},
        idle_subtraction=idle_subtraction,
    )


_PALMETTO_METERING = _nvml_metering(
    "Intel RAPL package energy of both sockets (pyJoules) minus an assumed idle 37.5 W per socket × runtime; "
    "can be negative",
    True,
    "CPU: an assumed idle power of 37.5 W per socket (75 W for 2 sockets) × runtime was subtracted by the "
    "authors, so CPU energy can be negative; GPU: nothing subtracted",
)


def _palmetto(gpu: str, memory_gb: int, hardware: str) -> _System:
    """A system of the Palmetto cluster: the same 2-socket Intel host, measured the same way, with one GPU."""
    return _System(
        short=f"palmetto-{gpu.lower()}",
        hardware=hardware,
        metering=_PALMETTO_METERING,
        cpu_model=None,
        gpu_name=f"NVIDIA {gpu} {memory_gb}GB",
        notes=f"Palmetto cluster (Clemson), 2-socket Intel host, one NVIDIA {gpu} {memory_gb} GB.",
    )


SYSTEMS: dict[str, _System] = {
    "M1-Pro": _System(
        short="m1-pro",
        hardware="m1-pro",
        metering=_Metering(
            meters={
                "cpu": "macOS powermetrics CPU power × the python process's share of tasks, "
                "integrated over the call",
                "gpu": "macOS powermetrics GPU power, integrated over the call",
            },
            idle_subtracted={"cpu": False, "gpu": False},
            idle_subtraction=_NO_IDLE
            + " (the CPU figure is apportioned to the python process by its task share)",
        ),
        cpu_model="Apple M1 Pro",
        gpu_name="Apple M1 Pro GPU",
        notes="Apple M1 Pro laptop, MPS backend. Its output sweep stops at 512 tokens.",
    ),
    "Swing AMD+A100": _System(
        short="swing-a100",
        hardware="a100-40g",
        metering=_nvml_metering(
            "AMD uProf per-core power of the 2 cores used, integrated over the run "
            "and apportioned by runtime",
            False,
            _NO_IDLE + " (the CPU figure covers only the 2 cores the process ran on)",
        ),
        cpu_model=None,
        gpu_name="NVIDIA A100 40GB",
        notes="Swing cluster (Argonne LCRC), AMD host CPU, one NVIDIA A100 40 GB.",
    ),
    "Palmetto Intel+A100": _palmetto("A100", 40, "a100-40g"),
    "Palmetto Intel+V100": _palmetto("V100", 16, "v100-16g"),
}


@dataclass(frozen=True)
class _Model:
    short: str
    hf_id: str
    aliases: tuple[str, ...]


MODELS: dict[str, _Model] = {
    "Llama-2 (7B)": _Model(
        "llama-2-7b-chat",
        "meta-llama/Llama-2-7b-chat-hf",
        ("Llama-2 (7B)", "llama-2-7b-chat", "Llama-2-7b-chat-hf"),
    ),
    "Mistral (7B)": _Model(
        "mistral-7b", "mistralai/Mistral-7B-v0.1", ("Mistral (7B)", "mistral-7b", "Mistral-7B-v0.1")
    ),
    "Falcon (7B)": _Model("falcon-7b", "tiiuae/falcon-7b", ("Falcon (7B)", "falcon-7b")),
}
#: The paper's threshold scripts pool every model measured on a system; so do these profiles. Their model id
#: matches no real model: a target uses one through ``profile = "pooled-7b.<system>.wilkins2024"``.
POOLED = _Model("pooled-7b", "wilkins2024/pooled-7b", ())

FILTER_DESCRIPTION = (
    "Rows whose Phase contains 'inference' (one generate call each); the warm-up call of each run dropped "
    "by Iteration == 0. Energy = CPU + GPU joules. Grouped per (system, model, sweep, bucket); rows of "
    "repeated runs of the same bucket are pooled. The paper's scripts instead drop rows whose Phase "
    "contains the character '0', which also drops iterations 10, 20, ... and the whole 1024/2048/4096 "
    "output buckets; that filter is not used here."
)


def read_inference_rows(data_dir: str | os.PathLike[str], sweep: Sweep) -> pd.DataFrame:
    """The rows of one sweep's file that measure an inference call (``Phase`` contains ``inference``),
    with a ``bucket`` column: the nominal input size (input sweep) or output limit (output sweep)."""
    path = Path(data_dir) / (INPUT_FILE if sweep == "input" else OUTPUT_FILE)
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(
            f"{path}: not found; pass the directory holding {INPUT_FILE} and {OUTPUT_FILE}",
            [InputIssue(str(path), 0, None, "file not found")],
        ) from None
    needed = [*_COLUMNS.values(), _SWEEP_COLUMN[sweep]]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}",
            [InputIssue(str(path), 1, c, "missing column") for c in missing],
        )
    rows = raw[raw[_COLUMNS["phase"]].astype(str).str.contains("inference", regex=False)].copy()
    rows["bucket"] = rows[_COLUMNS["input"] if sweep == "input" else _SWEEP_COLUMN[sweep]].astype(np.int64)
    return rows


def derive(data_dir: str | os.PathLike[str], created: str | None = None) -> list[Profile]:
    """One profile per (system, model) present in the data, with both sweeps.

    Input sweep: ``input_tokens`` = the nominal prompt size, ``output_tokens`` = the output token limit
    (32). Output sweep: ``output_tokens`` = the max_new_tokens bucket, ``input_tokens`` = the fixed
    prompt's token count. ``batch_size`` is 1: one prompt per generate call. ``created`` defaults to
    today's date (UTC).
    """
    created = created or dt.datetime.now(dt.timezone.utc).date().isoformat()
    rows = {sweep: read_inference_rows(data_dir, sweep) for sweep in ("input", "output")}
    per_sweep = {sweep: _summarise(rows[sweep], sweep) for sweep in ("input", "output")}
    pooled = {sweep: _summarise(rows[sweep], sweep, pooled=True) for sweep in ("input", "output")}
    checksums = {name: _git_blob_sha1(Path(data_dir) / name) for name in (INPUT_FILE, OUTPUT_FILE)}
    gpu_memory = _gpu_memory_mb(data_dir)
    combined = pd.concat([*per_sweep.values(), *pooled.values()], ignore_index=True)
    profiles: list[Profile] = []
    for (system, model), points in combined.groupby(["system", "model"], sort=True):
        if system not in SYSTEMS or (model not in MODELS and model != POOLED.short):
            raise InputError(
                f"unknown system {system!r} or model {model!r} in the data; known systems: "
                f"{', '.join(SYSTEMS)}; known models: {', '.join(MODELS)}"
            )
        sweeps_present = set(points["sweep"])
        if sweeps_present != {"input", "output"}:
            continue  # a cost model needs both sweeps
        spec, mspec = SYSTEMS[str(system)], MODELS.get(str(model), POOLED)
        name = f"{mspec.short}.{spec.short}.wilkins2024"
        pooled_models = sorted(
            set(rows["input"].loc[rows["input"][_COLUMNS["system"]] == system, _COLUMNS["model"]])
        )
        meta = ProfileMeta(
            name=name,
            model=mspec.hf_id,
            model_aliases=list(mspec.aliases),
            hardware=spec.hardware,
            system=str(system),
            source="imported",
            method="measured",
            source_detail={
                "dataset": f"{INPUT_FILE} and {OUTPUT_FILE} from {SOURCE_REPOSITORY}",
                "repository": SOURCE_REPOSITORY,
                "commit": SOURCE_COMMIT,
                "git_blob_sha1": checksums,
                "system_label": str(system),
                "model_label": ", ".join(pooled_models) if mspec is POOLED else str(model),
                "citation": CITATION,
                "licence": LICENCE_NOTE,
            },
            meters=dict(spec.metering.meters),
            fingerprint={
                "cpu_model": spec.cpu_model,
                "cpu_count": None,
                "gpus": [{"name": spec.gpu_name, "memory_mb": gpu_memory.get(str(system))}],
                "driver": None,
            },
            software={
                "framework": "Hugging Face transformers text-generation pipeline",
                "transformers": None,
                "torch": None,
                "dtype": "bfloat16",
                "generation": "do_sample=True, temperature=0.7, top_k=50, top_p=0.95, use_cache=False",
            },
            created=created,
            idle_power_w=None,
            idle_subtracted=dict(spec.metering.idle_subtracted),
            idle_subtraction=spec.metering.idle_subtraction,
            kv_cache=False,
            batch_size_semantics=(
                "prompts per generate call; the authors ran one prompt per call (the source's 'Batch Size' "
                "column, 32, was the pipeline's batch_size argument and had no effect on a single prompt)"
            ),
            filter=FILTER_DESCRIPTION,
            notes=(
                f"{spec.notes} {LICENCE_NOTE} use_cache=False: every new token re-runs the whole sequence, "
                "so decode cost grows quadratically with output length. Input-sweep input_tokens are the "
                "nominal prompt sizes (the prompts' real token counts differ slightly; total_tokens_mean is "
                "the re-tokenized prompt + output). The output sweep set "
                "min_new_tokens = 0.9 × max_new_tokens. "
                "CIs are 95 % t-interval half-widths over the trials."
                + (
                    f" Pooled over the models measured on this system ({', '.join(pooled_models)}), as the "
                    "paper's threshold scripts pool them; the output sweep's prompt length is the mean of "
                    "the models' counts of the same prompt."
                    if mspec is POOLED
                    else ""
                )
            ),
        )
        table = points.drop(columns=["system", "model"]).reset_index(drop=True)
        profiles.append(Profile(meta=meta, points=table[list(POINT_COLUMNS)]))
    return profiles


def paper_energy_per_token_table(data_dir: str | os.PathLike[str], sweep: Sweep) -> pd.DataFrame:
    """The paper's pooled mean energy per token (J/token), systems × token buckets, with the paper's filter.

    Filter as in the paper's scripts: keep ``Phase`` containing ``inference``, drop ``Phase``
    containing the character ``0``; energy per token = (CPU + GPU J) / Total Number of Tokens,
    averaged over all rows of a system and bucket (all models pooled).
    """
    rows = read_inference_rows(data_dir, sweep)
    rows = rows[~rows[_COLUMNS["phase"]].astype(str).str.contains("0", regex=False)]
    ept = (rows[_COLUMNS["cpu"]] + rows[_COLUMNS["gpu"]]) / rows[_COLUMNS["total"]]
    table = ept.groupby([rows[_COLUMNS["system"]], rows["bucket"]]).mean().unstack("bucket")
    table.index.name = "system"
    table.columns.name = f"{sweep}_tokens"
    return table


def _summarise(
    rows: pd.DataFrame, sweep: Literal["input", "output"], *, pooled: bool = False
) -> pd.DataFrame:
    """Per (system, model, bucket): trial count, means and 95 % CI half-widths, warm-up dropped.

    With ``pooled`` every model of a system counts as one (model ``pooled-7b``); the fixed token count
    (the output sweep's prompt, tokenised differently by each model) is then the rounded mean.
    """
    rows = rows[rows[_COLUMNS["iteration"]] != 0]
    values = pd.DataFrame(
        {
            "system": rows[_COLUMNS["system"]].astype(str),
            "model": POOLED.short if pooled else rows[_COLUMNS["model"]].astype(str),
            "bucket": rows["bucket"],
            "fixed": rows[_COLUMNS["input"] if sweep == "output" else _SWEEP_COLUMN[sweep]].astype(np.int64),
            "runtime_s": rows[_COLUMNS["runtime"]].astype(float),
            "energy_j": rows[_COLUMNS["cpu"]].astype(float) + rows[_COLUMNS["gpu"]].astype(float),
            "energy_cpu_j": rows[_COLUMNS["cpu"]].astype(float),
            "energy_gpu_j": rows[_COLUMNS["gpu"]].astype(float),
            "total_tokens": rows[_COLUMNS["total"]].astype(float),
        }
    )
    keys = ["system", "model", "bucket"]
    fixed = values.groupby(keys)["fixed"].agg(["min", "max"])
    if pooled:
        # one prompt length for the whole sweep of a system, so the output sweep stays at one input count
        values["fixed"] = values.groupby("system")["fixed"].transform("mean").round().astype(np.int64)
    elif (fixed["min"] != fixed["max"]).any():
        bad = fixed[fixed["min"] != fixed["max"]].index[0]
        raise InputError(f"{sweep} sweep: the fixed token count varies within {bad}; cannot make one point")
    grouped = values.groupby(keys, sort=True)
    means = grouped.mean(numeric_only=True)
    stds = grouped.std(ddof=1, numeric_only=True)
    trials = grouped.size()
    out = pd.DataFrame(index=means.index)
    out["sweep"] = sweep
    bucket = means.index.get_level_values("bucket").to_numpy(dtype=np.int64)
    fixed_count = means["fixed"].to_numpy(dtype=np.int64)
    out["input_tokens"] = bucket if sweep == "input" else fixed_count
    out["output_tokens"] = fixed_count if sweep == "input" else bucket
    out["batch_size"] = 1
    out["trials"] = trials.to_numpy(dtype=np.int64)
    for quantity in ("runtime_s", "energy_j", "energy_cpu_j", "energy_gpu_j"):
        prefix = quantity.removesuffix("_s").removesuffix("_j")
        unit = quantity.rsplit("_", 1)[1]
        out[f"{prefix}_{unit}_mean"] = means[quantity].to_numpy()
        out[f"{prefix}_{unit}_ci95"] = ci95_half_width(stds[quantity].to_numpy(), trials.to_numpy())
    out["total_tokens_mean"] = means["total_tokens"].to_numpy()
    return out.reset_index()[["system", "model", *POINT_COLUMNS]]


def _gpu_memory_mb(data_dir: str | os.PathLike[str]) -> dict[str, float | None]:
    """Total GPU memory per system as the data reports it (null for the M1, which reports none)."""
    frames = [pd.read_csv(Path(data_dir) / name) for name in (INPUT_FILE, OUTPUT_FILE)]
    both = pd.concat(frames, ignore_index=True)
    memory = both.groupby(_COLUMNS["system"])[_COLUMNS["gpu_total_mb"]].max()
    return {str(k): (None if pd.isna(v) else float(v)) for k, v in memory.items()}


def _git_blob_sha1(path: Path) -> str:
    """The file's git blob id (what ``git hash-object`` prints), to pin exactly which data was used."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the shipped profiles: ``python -m hpcqueue.profiles.wilkins2024 DATA_DIR OUT_DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m hpcqueue.profiles.wilkins2024",
        description="Derive hpcqueue profiles from the Wilkins et al. (2024) published measurements.",
    )
    parser.add_argument("data_dir", type=Path, help=f"directory holding {INPUT_FILE} and {OUTPUT_FILE}")
    parser.add_argument("out_dir", type=Path, help="profile root to write <name>/meta.json + points.csv into")
    parser.add_argument("--created", default=None, help="the 'created' date to record (default: today)")
    args = parser.parse_args(argv)
    for profile in derive(args.data_dir, created=args.created):
        directory = save_profile(profile, args.out_dir)
        print(f"{directory}  ({len(profile.points)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
