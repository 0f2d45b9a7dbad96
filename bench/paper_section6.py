"""Reproduce §6 of Wilkins, Keshav & Mortier (2024): hybrid energy and runtime against the routing threshold.

    python bench/paper_section6.py                         # Azure code trace, full and prompts <= 128 tokens
    python bench/paper_section6.py --workload tokens.csv   # also a trace of your own (e.g. Alpaca's counts)
    python bench/paper_section6.py --no-azure --workload tokens.csv --out /tmp/figs
    python bench/paper_section6.py --paper-data DIR        # the paper's raw data ($HPCQUEUE_PAPER_DATA)

The paper routes each query of a hybrid M1-Pro + Swing (AMD + A100) cluster by a token threshold T and reports
7.5 % less energy than Swing alone at T = 32 on Alpaca prompts (its Figs. 4-5). Alpaca is not used here (not
available offline); the workloads are the Azure LLM code trace shipped in ``examples/traces/`` (``--azure``
for another copy), its requests with short prompts, and any ``--workload`` file readable by
:func:`hpcqueue.planner.simulate.load_trace`. Two reproductions side by side:

(a) **the paper's arithmetic**, exactly as its threshold scripts compute it: the pooled energy-per-token
    tables with the paper's row filter (:func:`hpcqueue.profiles.wilkins2024.paper_energy_per_token_table`),
    looked up at the power of two nearest each prompt length, energy charged on the prompt tokens only
    (``Σ count · L · EPT``), the prompt-length histogram used for both the input and the output threshold (the
    output script runs the output-sweep tables on the same prompt lengths), T over {8, …, 2048} (input) and
    {8, …, 512} (output). Its runtime is the script's ``Σ count · L · mean runtime``: a token-weighted sum
    (token·s, not s), printed verbatim; the figures plot ``Σ count · mean runtime`` (h) instead. Lengths whose
    nearest power of two has no table entry (the script would fail on them) are looked up at the nearest
    measured bucket, and the tables say how many requests that affected.
(b) **hpcqueue's planner**: the cost models of the shipped profiles over each request's real (prompt, output)
    pair, the threshold swept along each dimension (:func:`hpcqueue.planner.thresholds.sweep`, the other
    dimension unbounded) and every policy (:func:`hpcqueue.planner.policies.compare`) at λ = 1.

"Best T" is the cheapest threshold among the grid plus T = 0 (nothing on the M1) and a T covering every
request (everything on the M1), so the hybrid at its best T is never worse than either system alone. Savings
are fractions of energy saved: ``vs A100`` against all on Swing (the paper's "workload-unaware" baseline) and
``vs best single`` against the cheaper of the two systems alone (what the tool must report). hpcqueue's own
``unaware`` policy is a round robin over both targets, a weaker baseline than the paper's.

(a) needs the paper's raw measurements (``all-input-stats.csv``, ``all-output-stats.csv``), which have no
redistribution licence and are not in the repository: pass their directory with ``--paper-data`` or set
``HPCQUEUE_PAPER_DATA``. Without them the script says so and runs (b) alone, on the shipped profiles (derived
summaries of the same measurements); the paper's columns of the summary tables then read ``-``.

Prints markdown tables (copied into ``docs/paper-reproduction.md``) and writes
``paper-section6-<workload>-{paper-method,planner}.png`` into ``--out`` (default ``docs/img``).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpcqueue.config import Target
from hpcqueue.errors import HpcqueueError, InputError
from hpcqueue.fileio import atomic_write_bytes
from hpcqueue.planner import thresholds as threshold_rule
from hpcqueue.planner.costs import CostModel
from hpcqueue.planner.policies import CostTable, Workload, compare, summarize
from hpcqueue.planner.simulate import load_trace
from hpcqueue.profiles.store import find_profile
from hpcqueue.profiles.wilkins2024 import paper_energy_per_token_table, read_inference_rows

REPO = Path(__file__).resolve().parents[1]
#: The paper's raw measurements are not in the repository (no redistribution licence): this names their copy.
PAPER_DATA_VAR = "HPCQUEUE_PAPER_DATA"
DEFAULT_AZURE = REPO / "examples" / "traces" / "AzureLLMInferenceTrace_code.csv"  # CC BY 4.0, shipped
DEFAULT_OUT = REPO / "docs" / "img"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Dimension = Literal["input", "output"]
RowFilter = Literal["paper", "warm-up"]
DIMENSIONS: tuple[Dimension, ...] = ("input", "output")

#: The paper's threshold grids (its input and output scripts) and the threshold it reports.
PAPER_THRESHOLDS: dict[Dimension, tuple[int, ...]] = {
    "input": tuple(8 * 2**i for i in range(9)),  # 8 … 2048
    "output": tuple(8 * 2**i for i in range(7)),  # 8 … 512
}
PAPER_T = 32
PAPER_SAVING = 0.075  # the paper's reported saving at T = 32, Alpaca, vs Swing alone
#: Row labels of the paper's data for the two systems of §6, keyed by the target names of examples/paper.toml.
PAPER_SYSTEMS = {"m1": "M1-Pro", "a100": "Swing AMD+A100"}
HARDWARE = {"m1": "m1-pro", "a100": "a100-40g"}
PROFILE_SYSTEM = {"m1": "m1-pro", "a100": "swing-a100"}
PROFILE_FAMILIES = ("llama-2-7b-chat", "pooled-7b")
#: Prompt-length cut-offs of the Azure subsets in the "saving against the token distribution" table.
CUTOFFS = (32, 64, 128, 256, 512, 1024)
J_PER_KWH = 3.6e6
S_PER_H = 3600.0


# ----------------------------------------------------------------------------------------------------------
# (a) the paper's arithmetic


@dataclass(frozen=True)
class PaperTables:
    """The paper's per-bucket lookup tables of one sweep, rows ``m1`` and ``a100``, columns the token buckets:
    mean energy per token (J/token) and mean runtime per query (s), both after the paper's row filter."""

    sweep: Dimension
    energy_per_token_j: pd.DataFrame
    runtime_s: pd.DataFrame

    @property
    def buckets(self) -> IntArray:
        return self.energy_per_token_j.columns.to_numpy(dtype=np.int64)


def load_paper_tables(data_dir: Path, sweep: Dimension, row_filter: RowFilter = "paper") -> PaperTables:
    """The paper's tables of ``sweep`` for the M1-Pro and Swing, buckets measured on both systems only.

    ``row_filter="paper"``: energy per token from :func:`paper_energy_per_token_table` and runtime with the
    same filter (``Phase`` contains ``inference`` and not the character ``0``, which also drops iterations
    10, 20, … and the 1024+ output buckets). ``"warm-up"``: the same means with only the warm-up call
    (``Iteration == 0``) dropped, as hpcqueue's profiles do, to show what the paper's filter changes."""
    rows = read_inference_rows(data_dir, sweep)
    if row_filter == "paper":
        ept = paper_energy_per_token_table(data_dir, sweep)
        rows = rows[~rows["Phase"].astype(str).str.contains("0", regex=False)]
    elif row_filter == "warm-up":
        rows = rows[rows["Iteration"] != 0]
        per_token = (rows["CPU Energy (J)"] + rows["GPU Energy (J)"]) / rows["Total Number of Tokens"]
        ept = per_token.groupby([rows["System"], rows["bucket"]]).mean().unstack("bucket")
    else:
        raise InputError(f"unknown row filter {row_filter!r}; valid: paper, warm-up")
    runtime = rows.groupby(["System", "bucket"])["Runtime (s)"].mean().unstack("bucket")
    missing = [s for s in PAPER_SYSTEMS.values() if s not in ept.index or s not in runtime.index]
    if missing:
        raise InputError(
            f"{data_dir}: no {sweep}-sweep rows for {', '.join(missing)}; is this the paper's data?"
        )
    labels = list(PAPER_SYSTEMS.values())
    ept = ept.loc[labels].dropna(axis=1)
    ept.columns = ept.columns.astype(np.int64).rename(f"{sweep}_tokens")
    runtime = runtime.loc[labels, ept.columns]
    ept.index = runtime.index = pd.Index(list(PAPER_SYSTEMS), name="target")
    return PaperTables(sweep=sweep, energy_per_token_j=ept.astype(float), runtime_s=runtime.astype(float))


def crossover_tokens(tables: PaperTables) -> int:
    """The largest bucket up to which the M1 uses less energy per token than Swing at every bucket (0: at
    none). The paper's 32-token thresholds rest on this crossover."""
    cheaper = (tables.energy_per_token_j.loc["m1"] < tables.energy_per_token_j.loc["a100"]).to_numpy()
    run = int(np.argmin(cheaper)) if not cheaper.all() else len(cheaper)
    return int(tables.buckets[run - 1]) if run else 0


def nearest_bucket(lengths: npt.ArrayLike, buckets: Sequence[int]) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """The paper's lookup key ``2 ** round(log2(L))`` for every length, and whether it had to be moved to the
    nearest measured bucket because the tables have no entry there (the paper's script fails on those)."""
    lengths_a = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    key = np.left_shift(1, np.rint(np.log2(lengths_a)).astype(np.int64))
    known = np.asarray(sorted(buckets), dtype=np.int64)
    clamped = ~np.isin(key, known)
    return np.clip(key, known[0], known[-1]), clamped


@dataclass(frozen=True)
class Curve:
    """Energy and runtime of the hybrid against one threshold (``threshold[i]``: the M1 takes requests whose
    token count along ``dimension`` is at most it), with both systems alone as baselines.

    ``runtime_s`` is a serial sum of per-request runtimes; ``runtime_token_s`` (paper method only) is the
    paper script's ``Σ count · L · runtime``. ``low_share`` is the share of requests on the M1."""

    method: Literal["paper", "planner"]
    dimension: Dimension
    threshold: IntArray
    energy_j: FloatArray
    runtime_s: FloatArray
    low_share: FloatArray
    m1_only: tuple[float, float]  # energy_j, runtime_s
    a100_only: tuple[float, float]
    runtime_token_s: FloatArray | None = None
    m1_only_token_s: float | None = None
    a100_only_token_s: float | None = None
    clamped_requests: int = 0
    grid: tuple[int, ...] = ()

    @property
    def best_single_j(self) -> float:
        return min(self.m1_only[0], self.a100_only[0])

    def best(self) -> int:
        """Index of the cheapest threshold (energy); the smallest such threshold on a tie."""
        return int(np.argmin(self.energy_j))

    def at(self, threshold: int) -> int:
        hits = np.flatnonzero(self.threshold == threshold)
        if not hits.size:
            raise KeyError(f"threshold {threshold} is not on the curve ({self.threshold.tolist()})")
        return int(hits[0])

    def saving_vs_a100(self, i: int) -> float:
        return float(1.0 - self.energy_j[i] / self.a100_only[0])

    def saving_vs_best_single(self, i: int) -> float:
        return float(1.0 - self.energy_j[i] / self.best_single_j)


def threshold_candidates(grid: Sequence[int], largest: int) -> IntArray:
    """The grid plus 0 (nothing on the M1) and, when the grid does not reach it, ``largest`` (everything on
    the M1)."""
    extra = [int(largest)] if grid and int(largest) > max(grid) else []
    return np.unique(np.asarray([0, *grid, *extra], dtype=np.int64))


def paper_method(lengths: npt.ArrayLike, tables: PaperTables, dimension: Dimension | None = None) -> Curve:
    """The paper's threshold simulation over a prompt-length sample: for each T, prompts of at most T tokens
    are charged the M1's energy per token, the rest Swing's, at the bucket nearest their length, times their
    length. ``dimension`` only labels the curve (defaults to the tables' sweep): the paper's output script
    uses the output-sweep tables on prompt lengths."""
    lengths_a = np.asarray(lengths, dtype=np.int64).ravel()
    values, counts = np.unique(lengths_a, return_counts=True)
    bucket, clamped = nearest_bucket(values, tables.buckets.tolist())
    ept = tables.energy_per_token_j.loc[:, bucket].to_numpy()  # (2 systems, lengths)
    runtime = tables.runtime_s.loc[:, bucket].to_numpy()
    tokens = (counts * values).astype(float)
    energy = {t: ept[j] * tokens for j, t in enumerate(tables.energy_per_token_j.index)}
    token_s = {t: runtime[j] * tokens for j, t in enumerate(tables.runtime_s.index)}
    serial = {t: runtime[j] * counts for j, t in enumerate(tables.runtime_s.index)}
    grid = PAPER_THRESHOLDS[tables.sweep]
    cand = threshold_candidates(grid, int(values.max()) if values.size else 0)
    on_m1 = values[None, :] <= cand[:, None]  # (thresholds, lengths)

    def split(per: dict[str, FloatArray]) -> FloatArray:
        return np.where(on_m1, per["m1"][None, :], per["a100"][None, :]).sum(axis=1)

    return Curve(
        method="paper",
        dimension=dimension or tables.sweep,
        threshold=cand,
        energy_j=split(energy),
        runtime_s=split(serial),
        low_share=(on_m1 * counts[None, :]).sum(axis=1) / max(int(counts.sum()), 1),
        m1_only=(float(energy["m1"].sum()), float(serial["m1"].sum())),
        a100_only=(float(energy["a100"].sum()), float(serial["a100"].sum())),
        runtime_token_s=split(token_s),
        m1_only_token_s=float(token_s["m1"].sum()),
        a100_only_token_s=float(token_s["a100"].sum()),
        clamped_requests=int(counts[clamped].sum()),
        grid=grid,
    )


# ----------------------------------------------------------------------------------------------------------
# (b) hpcqueue's planner


def paper_targets(family: str = "llama-2-7b-chat") -> list[Target]:
    """The two targets of ``examples/paper.toml`` (``a100`` = Swing, ``m1`` = M1 Pro, one slot each), with the
    shipped Wilkins et al. profiles of ``family`` (``llama-2-7b-chat``, as the example config, or
    ``pooled-7b``, every model of a system pooled as the paper's tables)."""
    if family not in PROFILE_FAMILIES:
        raise InputError(f"unknown profile family {family!r}; valid: {', '.join(PROFILE_FAMILIES)}")
    return [
        Target(
            name=name,
            hardware=HARDWARE[name],
            profile=f"{family}.{PROFILE_SYSTEM[name]}.wilkins2024",
            array_parallelism=1,
        )
        for name in ("a100", "m1")
    ]


@dataclass(frozen=True)
class PlannerRun:
    """A workload planned on the two targets: its cost table, the threshold curves and the policy report."""

    workload: Workload
    table: CostTable
    curves: dict[Dimension, Curve]
    report: dict[str, Any]


def power_of_two_grid(largest: int, start: int = 8) -> tuple[int, ...]:
    """``start`` (8, as the paper), then the powers of two up to the first one at or above ``largest`` (and
    at least up to the paper's T = 32, so every curve has that point)."""
    grid = [start]
    while grid[-1] < max(largest, PAPER_T):
        grid.append(grid[-1] * 2)
    return tuple(grid)


def cost_models(targets: Sequence[Target]) -> dict[str, CostModel | None]:
    """Each target's cost model, from its profile."""
    return {t.name: CostModel.from_profile(find_profile(str(t.profile))) for t in targets}


def plan(
    trace: pd.DataFrame,
    targets: Sequence[Target],
    models: dict[str, CostModel | None] | None = None,
    lam: float = 1.0,
) -> PlannerRun:
    """Cost table, threshold sweeps along both dimensions (M1 low, A100 high) and every policy at ``lam``.
    ``models`` defaults to :func:`cost_models` of ``targets``."""
    workload = Workload.from_tokens(trace["input_tokens"], trace["output_tokens"])
    models = cost_models(targets) if models is None else models
    table = CostTable.build(workload, targets, models)
    low, high = table.names.index("m1"), table.names.index("a100")
    singles = {
        name: summarize(workload, table, np.full(len(workload), j, dtype=np.int64), lam=lam)
        for j, name in enumerate(table.names)
    }
    curves: dict[Dimension, Curve] = {}
    for dimension in DIMENSIONS:
        tokens = workload.n_in if dimension == "input" else workload.n_out
        grid = power_of_two_grid(int(tokens.max()) if len(tokens) else 1)
        cand = threshold_candidates(grid, int(tokens.max()) if len(tokens) else 0)
        totals = [
            summarize(workload, table, idx, lam=lam)
            for idx in threshold_rule.sweep(workload, low, high, dimension, cand.tolist())
        ]
        curves[dimension] = Curve(
            method="planner",
            dimension=dimension,
            threshold=cand,
            energy_j=np.array([s["energy_j"] for s in totals]),
            runtime_s=np.array([s["runtime_s"] for s in totals]),
            low_share=np.array([s["per_target"]["m1"]["share"] for s in totals]),
            m1_only=(singles["m1"]["energy_j"], singles["m1"]["runtime_s"]),
            a100_only=(singles["a100"]["energy_j"], singles["a100"]["runtime_s"]),
            grid=grid,
        )
    report = compare(workload, table, "threshold", lam=lam)
    return PlannerRun(workload=workload, table=table, curves=curves, report=report)


# ----------------------------------------------------------------------------------------------------------
# workloads


@dataclass(frozen=True)
class NamedTrace:
    slug: str
    label: str
    trace: pd.DataFrame


def azure_workloads(path: Path, short_max: int) -> list[NamedTrace]:
    """The Azure code trace in full and its requests with prompts of at most ``short_max`` tokens."""
    trace = load_trace(path)
    short = trace[trace["input_tokens"] <= short_max].reset_index(drop=True)
    if short.empty:
        raise InputError(f"{path}: no request has a prompt of at most {short_max} tokens; raise --short-max")
    share = len(short) / len(trace)
    return [
        NamedTrace("azure-code", f"Azure code trace ({len(trace):,} requests)", trace),
        NamedTrace(
            f"azure-code-prompt-le-{short_max}",
            f"Azure code, prompts ≤ {short_max} tokens ({len(short):,} requests, {100 * share:.1f} %)",
            short,
        ),
    ]


def user_workload(path: Path) -> NamedTrace:
    trace = load_trace(path)
    if trace.empty:
        raise InputError(f"{path}: the trace has no request")
    slug = re.sub(r"[^a-z0-9]+", "-", path.name.split(".")[0].lower()).strip("-") or "workload"
    return NamedTrace(slug, f"{path.name} ({len(trace):,} requests)", trace)


# ----------------------------------------------------------------------------------------------------------
# tables


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one character per column (``l`` or ``r``, default: first l, rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """A signed percentage; three decimals below 0.1 %, so a tiny saving does not read as exactly zero."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * value:+.3f} %" if abs(value) < 1e-3 else f"{100 * value:+.2f} %"


def kwh(joules: float) -> str:
    return f"{joules / J_PER_KWH:.4g}"


def hours(seconds: float) -> str:
    return f"{seconds / S_PER_H:,.2f}"


def threshold_label(curve: Curve, i: int) -> str:
    t = int(curve.threshold[i])
    if t == 0:
        return "0 (none on M1)"
    label = str(t) + (" (paper)" if curve.method == "paper" and t == PAPER_T else "")
    if curve.low_share[i] == 1.0 and (i == 0 or curve.low_share[i - 1] < 1.0):
        label += " (all on M1)"
    return label


def paper_tables_markdown(tables: dict[Dimension, PaperTables]) -> str:
    out = []
    for sweep, tab in tables.items():
        headers = [f"{sweep} tokens", *map(str, tab.buckets)]
        rows = [
            ["M1-Pro J/token", *(f"{v:.4f}" for v in tab.energy_per_token_j.loc["m1"])],
            ["Swing J/token", *(f"{v:.4f}" for v in tab.energy_per_token_j.loc["a100"])],
            ["M1-Pro s/query", *(f"{v:.2f}" for v in tab.runtime_s.loc["m1"])],
            ["Swing s/query", *(f"{v:.3f}" for v in tab.runtime_s.loc["a100"])],
        ]
        out.append(markdown(headers, rows))
        out.append(f"\nM1-Pro cheaper per token up to {crossover_tokens(tab)} {sweep} tokens.\n")
    return "\n".join(out)


def curve_markdown(curve: Curve) -> str:
    paper = curve.method == "paper"
    headers = ["T", "hybrid kWh", "on M1", "vs A100", "vs best single", "runtime h"]
    if paper:
        headers.append("Σ L·R (token·h)")
    rows = []
    for i in range(len(curve.threshold)):
        row = [
            threshold_label(curve, i),
            kwh(curve.energy_j[i]),
            f"{100 * curve.low_share[i]:.1f} %",
            pct(curve.saving_vs_a100(i)),
            pct(curve.saving_vs_best_single(i)),
            hours(curve.runtime_s[i]),
        ]
        if paper and curve.runtime_token_s is not None:
            row.append(hours(curve.runtime_token_s[i]))
        rows.append(row)
    single = [
        ("M1-Pro only", curve.m1_only, curve.m1_only_token_s),
        ("A100 only", curve.a100_only, curve.a100_only_token_s),
    ]
    for name, (energy, runtime), token_s in single:
        row = [
            name,
            kwh(energy),
            "",
            pct(1 - energy / curve.a100_only[0]),
            pct(1 - energy / curve.best_single_j),
        ]
        row.append(hours(runtime))
        if paper:
            row.append(hours(token_s or 0.0))
        rows.append(row)
    return markdown(headers, rows)


def policies_markdown(report: dict[str, Any]) -> str:
    baselines = report["baselines"]
    a100 = baselines["single:a100"]["energy_j"]
    best = baselines[report["best_single"]]["energy_j"]
    unaware = baselines["unaware"]["energy_j"]
    rows = []
    for name in ("threshold", "optimal", "unaware", "single:a100", "single:m1"):
        b = baselines[name]
        rows.append(
            [
                name,
                kwh(b["energy_j"]),
                f"{100 * b['requests_per_target']['m1'] / max(report['requests'], 1):.1f} %",
                pct(1 - b["energy_j"] / a100),
                pct(1 - b["energy_j"] / best),
                pct(1 - b["energy_j"] / unaware),
                hours(b["runtime_s"]),
                hours(b["makespan_s"]),
            ]
        )
    headers = ["policy", "kWh", "on M1", "vs A100", "vs best single", "vs unaware", "runtime h", "makespan h"]
    found = report["thresholds"]
    note = (
        f"\nthreshold policy: {found['low']} takes prompts ≤ {found['input_tokens']} and outputs ≤ "
        f"{found['output_tokens']} tokens; best single target: {report['best_single']}; "
        f"savings_vs_best_single = {pct(report['savings_vs_best_single'])} "
        f"(what `hpcqueue simulate` reports)"
    )
    return markdown(headers, rows) + "\n" + note


def prediction_grid_markdown(models: dict[str, CostModel | None]) -> str:
    """Predicted energy per request (J) on each system over a grid of (prompt, output) token counts, and
    which is cheaper: where the planner's routing comes from."""
    m1_model, a100_model = models.get("m1"), models.get("a100")
    if m1_model is None or a100_model is None:
        raise InputError("the prediction grid needs cost models for targets 'm1' and 'a100'")
    prompts = np.array([8, 32, 128, 512, 2048, 8192])
    outputs = np.array([8, 16, 32, 128, 512])
    n_in, n_out = (a.ravel() for a in np.meshgrid(prompts, outputs, indexing="ij"))
    m1 = m1_model.predict(n_in, n_out).energy_j.reshape(len(prompts), len(outputs))
    a100 = a100_model.predict(n_in, n_out).energy_j.reshape(len(prompts), len(outputs))
    rows = [
        [
            str(p),
            *(
                f"{m1[i, j]:,.0f} / {a100[i, j]:,.0f} {'M1' if m1[i, j] < a100[i, j] else 'A100'}"
                for j in range(len(outputs))
            ),
        ]
        for i, p in enumerate(prompts)
    ]
    return markdown(["prompt \\ output", *map(str, outputs)], rows)


def filter_markdown(data_dir: Path, prompts: dict[str, IntArray]) -> str:
    """What the paper's row filter changes against dropping only the warm-up call: the largest change of a
    per-token mean, the crossover, the buckets left, and the T = 32 saving vs Swing on each prompt sample."""
    rows = []
    for sweep in DIMENSIONS:
        paper, warm = (load_paper_tables(data_dir, sweep, f) for f in ("paper", "warm-up"))
        common = [b for b in paper.buckets if b in set(warm.buckets)]
        change = (paper.energy_per_token_j[common] / warm.energy_per_token_j[common] - 1).abs().max().max()
        for name, tab in (
            ("paper ('0' in Phase dropped)", paper),
            ("warm-up only (Iteration 0 dropped)", warm),
        ):
            savings = [paper_method(v, tab) for v in prompts.values()]
            rows.append(
                [
                    sweep,
                    name,
                    f"{tab.buckets.min()}-{tab.buckets.max()}",
                    str(crossover_tokens(tab)),
                    f"{100 * change:.2f} %" if tab is warm else "",
                    *(pct(c.saving_vs_a100(c.at(PAPER_T))) for c in savings),
                ]
            )
    headers = ["sweep", "row filter", "buckets", "crossover", "largest EPT change"]
    headers += [f"T=32 vs Swing, {name}" for name in prompts]
    return markdown(headers, rows, align="lllrr" + "r" * len(prompts))


def best_cell(curve: Curve) -> str:
    """The cheapest threshold and its saving against the better system alone, naming that system."""
    i = curve.best()
    single = "M1" if curve.m1_only[0] < curve.a100_only[0] else "A100"
    return f"T = {threshold_label(curve, i)}: {pct(curve.saving_vs_best_single(i))} vs {single}"


def saving_rows(label: str, paper_in: Curve | None, run: PlannerRun) -> list[str]:
    """One row of the summary tables: the paper's arithmetic (input threshold; ``-`` without the paper's
    data) and the planner's policies."""
    report = run.report
    best = report["baselines"][report["best_single"]]["energy_j"]
    planner_in = run.curves["input"]
    return [
        label,
        f"{len(run.workload):,}",
        pct(paper_in.saving_vs_a100(paper_in.at(PAPER_T))) if paper_in else pct(None),
        best_cell(paper_in) if paper_in else pct(None),
        pct(planner_in.saving_vs_best_single(planner_in.at(PAPER_T))),
        best_cell(planner_in),
        pct(report["savings_vs_best_single"]),
        pct(1 - report["baselines"]["optimal"]["energy_j"] / best),
        report["best_single"].removeprefix("single:"),
    ]


SUMMARY_HEADERS = [
    "workload",
    "requests",
    "paper: T=32 vs Swing",
    "paper: best T",
    "planner: prompt ≤ 32 on M1 vs best single",
    "planner: best prompt T",
    "planner: threshold policy vs best single",
    "planner: optimal vs best single",
    "planner: best single",
]


# ----------------------------------------------------------------------------------------------------------
# figures


def plot_curves(curves: dict[Dimension, Curve], title: str, path: Path) -> None:
    """One figure, 2 × 2: energy (kWh) and runtime (h) against the threshold, input and output dimension; the
    hybrid's curve over the grid, dashed lines for each system alone, the paper's T = 32 and the cheapest T,
    whose saving against the better single system is written in the energy panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex="col", constrained_layout=True)
    for col, dimension in enumerate(DIMENSIONS):
        curve = curves[dimension]
        on_grid = np.isin(curve.threshold, curve.grid)
        best = curve.best()
        paper = curve.method == "paper"
        panels = (
            (curve.energy_j, curve.m1_only[0], curve.a100_only[0], J_PER_KWH, "energy (kWh)"),
            (curve.runtime_s, curve.m1_only[1], curve.a100_only[1], S_PER_H, "runtime, serial sum (h)"),
        )
        for row, (values, m1, a100, unit, ylabel) in enumerate(panels):
            ax = axes[row, col]
            ax.plot(curve.threshold[on_grid], values[on_grid] / unit, "o-", color="C0", label="hybrid")
            ax.axhline(m1 / unit, color="C3", linestyle="--", label="M1-Pro only")
            ax.axhline(a100 / unit, color="C2", linestyle="--", label="A100 (Swing) only")
            ax.axvline(PAPER_T, color="0.6", linestyle=":", label="T = 32 (the paper's threshold)")
            if on_grid[best]:
                ax.plot(
                    curve.threshold[best],
                    values[best] / unit,
                    "*",
                    color="C1",
                    markersize=15,
                    label="lowest-energy T",
                )
            span = np.concatenate([values[on_grid], [m1, a100]]) / unit
            pad = 0.06 * (span.max() - span.min()) or 0.05 * abs(span.max()) or 1.0
            ax.set_ylim(span.min() - pad, span.max() + pad)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(list(curve.grid)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(t) for t in curve.grid], fontsize=8)
            ax.set_ylabel(("prompt-token " if paper and row == 0 else "") + ylabel)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(f"{dimension} threshold" + (" (output-sweep tables)" if paper and col else ""))
                ax.text(
                    0.02,
                    0.8,
                    f"lowest energy at T = {threshold_label(curve, best)}\n"
                    f"saves {pct(curve.saving_vs_best_single(best)).lstrip('+')} vs the better system alone",
                    transform=ax.transAxes,
                    va="top",
                    fontsize=9,
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"},
                )
            else:
                on = "prompt" if paper or dimension == "input" else "output"
                ax.set_xlabel(f"threshold T: requests whose {on} has ≤ T tokens go to the M1-Pro")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------


NO_PAPER_DATA_NOTE = (
    f"> note: the paper's raw measurements (Wilkins et al. 2024) are not in the repository (they have no "
    f"redistribution licence), and neither --paper-data nor {PAPER_DATA_VAR} names a copy: the paper's "
    f"arithmetic (a) is skipped and its columns read '-'. The planner (b) runs on the shipped profiles.\n"
)


def paper_data_dir(given: Path | None) -> Path | None:
    """The directory of the paper's raw measurements, or None when none is given. A directory that is given
    but lacks them is an error, not a silent skip."""
    if given is None:
        return None
    missing = [
        name for name in ("all-input-stats.csv", "all-output-stats.csv") if not (given / name).is_file()
    ]
    if missing:
        raise InputError(
            f"{given}: no {' or '.join(missing)}; --paper-data (or {PAPER_DATA_VAR}) must name the directory "
            "of the paper's raw measurements"
        )
    return given


def run(args: argparse.Namespace) -> int:
    data = paper_data_dir(args.data)
    targets = paper_targets(args.profiles)
    workloads: list[NamedTrace] = []
    azure: pd.DataFrame | None = None
    if not args.no_azure:
        if not args.azure.is_file():
            raise InputError(f"{args.azure}: Azure code trace not found; pass --azure PATH or --no-azure")
        workloads += azure_workloads(args.azure, args.short_max)
        azure = workloads[0].trace
    workloads += [user_workload(p) for p in args.workload]
    if not workloads:
        raise InputError("no workload: drop --no-azure or give --workload PATH")
    tables = {sweep: load_paper_tables(data, sweep) for sweep in DIMENSIONS} if data else None
    models = cost_models(targets)

    print("# Hybrid M1-Pro + Swing A100: the paper's §6 on our workloads\n")
    if tables is None:
        print(NO_PAPER_DATA_NOTE)
    print(f"profiles (planner): {', '.join(str(t.profile) for t in targets)}; λ = 1\n")
    if tables is not None:
        print("## The paper's lookup tables (pooled models, the paper's row filter)\n")
        print(paper_tables_markdown(tables))
    if azure is not None and data is not None:
        print("## The paper's row filter against dropping only the warm-up call (M1-Pro and Swing)\n")
        samples = {
            "Azure": azure["input_tokens"].to_numpy(),
            f"prompts ≤ {args.short_max}": workloads[1].trace["input_tokens"].to_numpy(),
        }
        print(filter_markdown(data, samples) + "\n")
    print("## Planner: predicted energy per request, M1-Pro / A100 (J), and the cheaper one\n")
    print(prediction_grid_markdown(models) + "\n")

    summary = []
    for named in workloads:
        prompt = named.trace["input_tokens"].to_numpy()
        paper = {d: paper_method(prompt, tables[d], d) for d in DIMENSIONS} if tables else {}
        planned = plan(named.trace, targets, models)
        stats = planned.report
        print(f"## {named.label}\n")
        print(
            f"prompt tokens: median {np.median(prompt):g}, mean {prompt.mean():.1f}; output tokens: median "
            f"{named.trace['output_tokens'].median():g}, mean {named.trace['output_tokens'].mean():.1f}; "
            f"share of prompt tokens in prompts ≤ 32: "
            f"{100 * prompt[prompt <= PAPER_T].sum() / max(prompt.sum(), 1):.2f} %\n"
        )
        for d in paper:
            curve = paper[d]
            note = (
                f"; {curve.clamped_requests:,} requests looked up at the nearest measured bucket"
                if curve.clamped_requests
                else ""
            )
            print(f"### (a) paper's arithmetic, {d} threshold (prompt tokens only{note})\n")
            print(curve_markdown(curve) + "\n")
        for d in DIMENSIONS:
            print(
                f"### (b) planner, {d} threshold ({d} tokens ≤ T on the M1, the other dimension unbounded)\n"
            )
            print(curve_markdown(planned.curves[d]) + "\n")
        print("### (b) planner, every policy (λ = 1)\n")
        print(policies_markdown(stats) + "\n")
        for warning in stats["warnings"]:
            print(f"- warning: {warning}")
        print()
        summary.append(saving_rows(named.label, paper.get("input"), planned))
        for method, curves in (("paper-method", paper), ("planner", planned.curves)):
            if not curves:
                continue
            what = "the paper's arithmetic" if method == "paper-method" else "hpcqueue's planner"
            path = args.out / f"paper-section6-{named.slug}-{method}.png"
            plot_curves(curves, f"{named.label}: {what}", path)
            print(f"wrote {path}")
        print()

    print("## Summary: energy saved by the hybrid\n")
    print(markdown(SUMMARY_HEADERS, summary) + "\n")
    print(
        f"For comparison, the paper: {pct(PAPER_SAVING)} at T = {PAPER_T} against Swing alone, on Alpaca "
        "prompts (not available here; pass their token counts with --workload).\n"
    )

    if azure is not None:
        print("## The saving against the workload's prompt lengths (Azure code requests with prompt ≤ N)\n")
        rows = []
        for cutoff in (*CUTOFFS, None):
            subset = azure if cutoff is None else azure[azure["input_tokens"] <= cutoff]
            label = "all" if cutoff is None else f"≤ {cutoff}"
            row = saving_rows(
                label,
                paper_method(subset["input_tokens"].to_numpy(), tables["input"]) if tables else None,
                plan(subset, targets, models),
            )
            rows.append([row[0], f"{row[1]} ({100 * len(subset) / len(azure):.1f} %)", *row[2:]])
        headers = ["prompt tokens", *SUMMARY_HEADERS[1:]]
        print(markdown(headers, rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--paper-data",
        "--data",
        dest="data",
        type=Path,
        default=Path(os.environ[PAPER_DATA_VAR]) if os.environ.get(PAPER_DATA_VAR) else None,
        help="directory of the paper's raw measurements (all-input-stats.csv, all-output-stats.csv; not in "
        f"the repository) for the paper's arithmetic (default: ${PAPER_DATA_VAR}; without: planner only)",
    )
    parser.add_argument(
        "--azure",
        type=Path,
        default=DEFAULT_AZURE,
        help="the Azure code trace (CSV; default: the copy shipped in examples/traces/)",
    )
    parser.add_argument("--no-azure", action="store_true", help="skip the Azure workloads")
    parser.add_argument(
        "--short-max", type=int, default=128, help="prompt tokens of the short Azure subset (default 128)"
    )
    parser.add_argument(
        "--workload",
        type=Path,
        action="append",
        default=[],
        help="a trace of token counts (CSV/JSONL with prompt and output columns, e.g. input_tokens and "
        "output_tokens); repeatable",
    )
    parser.add_argument(
        "--profiles",
        choices=PROFILE_FAMILIES,
        default="llama-2-7b-chat",
        help="profiles of the planner's targets (default: llama-2-7b-chat, as examples/paper.toml)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the PNG figures")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HpcqueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
