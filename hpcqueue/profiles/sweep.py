"""Measure a profile: the paper's input/output token sweeps, run on this machine or as a job on a target.

The method follows Wilkins, Keshav and Mortier (2024), with these changes:

* **Exact lengths.** Every prompt has exactly the nominal number of tokens: it is cut from a neutral text
  with the model's own tokenizer and checked by re-encoding. Every call generates exactly ``M`` tokens
  (``min_new_tokens = max_new_tokens = M``). The paper used ``min_new_tokens = 0.9 × M``, so its outputs
  varied in length.
* **KV cache on**, as in normal serving; the paper ran with ``use_cache=False``. ``SweepConfig.kv_cache``
  switches it off to reproduce the paper.
* **Batch sizes.** Each point is measured at several batch sizes: that many identical prompts per
  ``generate`` call, so no padding. The largest size stops growing at the first out-of-memory error.
* **Idle power.** Idle power is measured with the same meter before the sweep and subtracted from every
  trial (idle power × the trial's duration, per energy domain). The raw figures are kept in ``trials.csv``.
* **Randomised order.** The points run in a seeded random order, so drift (heat, other tenants) does not
  line up with token counts.
* **Stopping rule.** A point is repeated until the 95 % confidence interval of its mean runtime is narrow
  enough (the paper's rule) or ``max_trials`` is reached; its warm-up calls are dropped. The model load is
  metered on its own.

**Engines.** ``SweepConfig.engine`` picks what runs the model, behind one small interface
(:class:`SweepRunner`: a tokenizer, the context length, ``generate_exact``). With ``transformers`` a point at
batch size b is one ``generate`` call on b copies of the prompt. With ``vllm`` it is b copies submitted to
vLLM together (``max_num_seqs`` = the grid's largest batch size, so they run as concurrent sequences), with
the prompt given as token ids and ``min_tokens = max_tokens``, end-of-sequence ignored, prefix caching off
(identical prompts would otherwise skip their prefill from the second call on). Metering, idle subtraction,
trials and the files written are the same for both.

The grid and the statistics of the trials are in :mod:`hpcqueue.profiles.grid`. ``run_sweep`` runs on this
machine; ``sweep_job`` is what a profiling job runs on a target's node
(:mod:`hpcqueue.profiles.runs` submits it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from hpcqueue.config import DEFAULT_ENGINE
from hpcqueue.errors import HpcqueueError, ModelError
from hpcqueue.fileio import atomic_write_text
from hpcqueue.profiles.fingerprint import fingerprint, software_versions
from hpcqueue.profiles.grid import (
    SweepConfig,
    SweepPoint,
    Trial,
    domain_group,
    grid_points,
    idle_energy_j,
    idle_power_w,
    run_trials,
    shuffled,
    summarise,
    trials_table,
)
from hpcqueue.profiles.store import Profile, ProfileMeta, ci95_half_width, save_profile

if TYPE_CHECKING:
    from hpcqueue.meters.base import Measurement
    from hpcqueue.models import ModelRef
    from hpcqueue.worker.engine import Engine

logger = logging.getLogger(__name__)

Log = Callable[[str], None]

TRIALS_FILE = "trials.csv"
#: Neutral, plain English: prompts are cut from repetitions of it.
NEUTRAL_TEXT = (
    "The committee met on a quiet morning to review the annual report on regional transport, water supply "
    "and public libraries. Members read each section in turn, asked short questions about the figures, and "
    "agreed to publish a summary for residents before the end of the month."
)
#: Time limits of a profiling job (``hpcqueue.profiles.runs``): a full grid, and ``--quick``.
FULL_TIMEOUT_MIN = 24 * 60
QUICK_TIMEOUT_MIN = 60


# ---------------------------------------------------------------------------- prompts and generation


@dataclass(frozen=True)
class PromptSpec:
    """A prompt built to a token count: ``ids`` is the re-encoded text, the length the model sees."""

    nominal_tokens: int
    text: str
    ids: list[int]

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def exact(self) -> bool:
        return self.tokens == self.nominal_tokens


def exact_length_prompt(tokenizer: Any, n_tokens: int, text: str = NEUTRAL_TEXT) -> PromptSpec:
    """A prompt that encodes to exactly ``n_tokens`` tokens, special tokens included, if one exists.

    ``tokenizer`` is a transformers tokenizer (``encode(text, add_special_tokens=...)`` and
    ``decode(ids, skip_special_tokens=True)``). The prompt is cut from repetitions of ``text``. Decoding
    and re-encoding can merge tokens at the cut, so the cut is adjusted until the re-encoded length is
    right. If no cut gives it (or ``n_tokens`` is below the tokenizer's own special tokens), the closest
    prompt is returned and ``PromptSpec.exact`` is False.
    """
    special = len(tokenizer.encode("", add_special_tokens=True))
    want = n_tokens - special
    if want <= 0:
        return PromptSpec(n_tokens, "", list(tokenizer.encode("", add_special_tokens=True)))
    base = tokenizer.encode(text, add_special_tokens=False)
    copies = want // max(1, len(base)) + 2
    pool = list(tokenizer.encode(" ".join([text] * copies), add_special_tokens=False))
    best: PromptSpec | None = None
    tried: set[int] = set()
    k = want
    for _ in range(64):
        tried.add(k)
        candidate = str(tokenizer.decode(pool[:k], skip_special_tokens=True))
        ids = list(tokenizer.encode(candidate, add_special_tokens=True))
        spec = PromptSpec(n_tokens, candidate, ids)
        if spec.exact:
            return spec
        if best is None or abs(spec.tokens - n_tokens) < abs(best.tokens - n_tokens):
            best = spec
        step = n_tokens - spec.tokens
        nxt = k + step
        for offset in (0, 1, -1, 2, -2, 3, -3):
            if 0 < nxt + offset <= len(pool) and nxt + offset not in tried:
                nxt += offset
                break
        else:
            break
        k = nxt
    assert best is not None
    return best


def generate_exact(
    engine: Engine, prompt_ids: Sequence[int], n_out: int, batch_size: int, *, kv_cache: bool = True
) -> int:
    """Run one ``generate`` call of ``batch_size`` copies of the prompt that produces exactly ``n_out``
    tokens per row (greedy, ``min_new_tokens = max_new_tokens``); returns the call's prompt + generated
    tokens.

    Uses the engine's loaded model and tokenizer directly: the engine's own ``generate`` stops at
    end-of-sequence, which a profile must not do.
    """
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=n_out,
        min_new_tokens=n_out,
        do_sample=False,
        use_cache=kv_cache,
        pad_token_id=engine.pad_id,
        eos_token_id=engine.eos_ids,
    )
    input_ids = torch.tensor([list(prompt_ids)] * batch_size, dtype=torch.long, device=engine.device)
    with torch.inference_mode():
        output = engine.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
        )
    if engine.device.startswith("cuda"):
        torch.cuda.synchronize()
    generated = int(output.shape[1]) - len(prompt_ids)
    if generated != n_out:
        raise ModelError(
            f"the model generated {generated} tokens where {n_out} were forced (min_new_tokens = "
            f"max_new_tokens = {n_out}); its generation config may override the limits"
        )
    return batch_size * (len(prompt_ids) + generated)


def _is_out_of_memory(exc: BaseException) -> bool:
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in str(exc).lower()
    )


# ------------------------------------------------------------------------------------------ engines


class SweepRunner(Protocol):
    """An inference engine as the sweep drives it: a loaded model that generates exact lengths.

    ``tokenizer`` is a transformers tokenizer (prompts are cut with :func:`exact_length_prompt`);
    ``context_length`` the most tokens (prompt + output) one sequence may use, None when unknown. A point
    whose sequences need more than ``kv_cache_tokens`` together does not run them all at once: the sweep
    still measures it, and records it in ``meta.json`` (``kv_cache_limited_points``).
    """

    engine: str
    tokenizer: Any
    context_length: int | None
    #: Most tokens the engine holds for sequences running at once (vLLM's KV cache); None: no such limit.
    kv_cache_tokens: int | None
    #: What a point's ``batch_size`` counts, for ``meta.json``.
    batch_size_semantics: str

    def generate_exact(self, prompt_ids: Sequence[int], n_out: int, batch_size: int) -> int:
        """Generate exactly ``n_out`` tokens for each of ``batch_size`` copies of the prompt; returns the
        prompt + generated tokens of all of them."""
        ...

    def release_memory(self) -> None:
        """Free what a failed (out-of-memory) call left behind."""
        ...

    def software(self) -> dict[str, Any]:
        """The engine's part of ``meta.json``'s ``software``: device, dtype, versions, generation settings."""
        ...


class TransformersRunner:
    """The sweep on transformers: one ``generate`` call per point and trial (:func:`generate_exact`)."""

    engine = "transformers"
    kv_cache_tokens: int | None = None  # its KV cache grows with the batch until memory runs out
    batch_size_semantics = (
        "identical prompts per generate call (all rows the same length, no padding); runtime, energy and "
        "total_tokens are per call"
    )

    def __init__(self, model_ref: ModelRef, config: SweepConfig) -> None:
        from hpcqueue.worker.engine import Engine

        self.kv_cache = config.kv_cache
        self.model = Engine(model_ref, device=config.device, dtype=config.dtype, batch_size=1)
        self.tokenizer = self.model.tokenizer
        self.context_length: int | None = self.model.context_length

    def generate_exact(self, prompt_ids: Sequence[int], n_out: int, batch_size: int) -> int:
        return generate_exact(self.model, prompt_ids, n_out, batch_size, kv_cache=self.kv_cache)

    def release_memory(self) -> None:
        self.model._release_memory()

    def software(self) -> dict[str, Any]:
        return {
            "device": self.model.device,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "generation": {
                "decoding": "greedy",
                "use_cache": self.kv_cache,
                "output_length": "exact: min_new_tokens = max_new_tokens",
            },
        }


class VllmRunner:
    """The sweep on vLLM: a point's batch is submitted as that many sequences at once, which vLLM runs
    concurrently (``max_num_seqs`` is the grid's largest batch size).

    vLLM is loaded as the workers load it (``hpcqueue.worker.vllm_engine.load_llm``: in this process on one
    device, eager with a small KV cache on CPUs), with prefix caching off.
    """

    engine = "vllm"
    batch_size_semantics = (
        "concurrent sequences (vLLM max_num_seqs): that many identical prompts submitted to vLLM together, "
        "with max_num_seqs = the sweep's largest batch size; runtime, energy and total_tokens are per "
        "submission"
    )

    def __init__(self, model_ref: ModelRef, config: SweepConfig) -> None:
        from hpcqueue.worker.vllm_engine import load_llm

        # loaded as the workers load it: the profile measures what they run
        self.llm, self.device, self.options = load_llm(
            model_ref,
            device=config.device,
            dtype=config.dtype,
            max_num_seqs=max(config.effective_batch_sizes(), default=1),
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            seed=config.seed,
            enable_prefix_caching=False,  # every trial repeats one prompt: a cache would skip its prefill
        )
        # the tokenizer vLLM encodes the prompts with (the model's own, loaded by vllm.LLM)
        self.tokenizer = self.llm.get_tokenizer()
        import vllm

        self._sampling = vllm.SamplingParams
        self.version = str(vllm.__version__)
        engine_config = self.llm.llm_engine.vllm_config
        self.context_length: int | None = int(engine_config.model_config.max_model_len)
        self.dtype = str(engine_config.model_config.dtype).removeprefix("torch.")
        cache = engine_config.cache_config
        blocks = cache.num_gpu_blocks
        self.kv_cache_tokens: int | None = int(blocks) * int(cache.block_size) if blocks else None

    def generate_exact(self, prompt_ids: Sequence[int], n_out: int, batch_size: int) -> int:
        params = self._sampling(max_tokens=n_out, min_tokens=n_out, ignore_eos=True, temperature=0.0)
        prompt = {"prompt_token_ids": list(prompt_ids)}
        outputs = self.llm.generate([prompt] * batch_size, params, use_tqdm=False)
        generated = [len(o.outputs[0].token_ids) for o in outputs]
        if len(outputs) != batch_size or any(n != n_out for n in generated):
            raise ModelError(
                f"vLLM generated {generated} tokens for {batch_size} sequence(s) where {n_out} each were "
                f"forced (min_tokens = max_tokens = {n_out}, ignore_eos)"
            )
        return sum(len(o.prompt_token_ids or ()) for o in outputs) + sum(generated)

    def release_memory(self) -> None:
        pass  # vLLM allocates its KV cache once, at load; a failed call leaves nothing to free

    def software(self) -> dict[str, Any]:
        return {
            "vllm": self.version,
            "device": self.device,
            "dtype": self.dtype,
            "vllm_options": {
                k: v for k, v in self.options.items() if k not in ("model", "tokenizer", "dtype")
            },
            "kv_cache_tokens": self.kv_cache_tokens,
            "generation": {
                "decoding": "greedy (temperature 0)",
                "use_cache": True,
                "prefix_caching": False,
                "output_length": "exact: min_tokens = max_tokens, ignore_eos",
            },
        }


#: The runner of each engine.
RUNNERS: dict[str, Callable[[ModelRef, SweepConfig], SweepRunner]] = {
    "transformers": TransformersRunner,
    "vllm": VllmRunner,
}


def load_runner(model_ref: ModelRef, config: SweepConfig) -> SweepRunner:
    """Load ``model_ref`` into ``config.engine``'s runner."""
    return RUNNERS[config.engine](model_ref, config)


# ----------------------------------------------------------------------------------------- the sweep


class MeasuredProfile(Profile):
    """A profile made by ``run_sweep``: the profile, plus every call it metered (``trials``, the rows of
    ``trials.csv``: warm-ups, raw and idle-subtracted energy per domain)."""

    def __init__(
        self, meta: ProfileMeta, points: pd.DataFrame, trials: pd.DataFrame, path: Path | None = None
    ) -> None:
        super().__init__(meta=meta, points=points, path=path)
        self.trials = trials


def model_slug(model: str) -> str:
    """The last path part of a model id or directory, lowercased: ``meta-llama/Llama-2-7b-hf`` →
    ``llama-2-7b-hf``; characters a profile name cannot hold become ``-``."""
    last = model.rstrip("/").rsplit("/", 1)[-1].lower()
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in last).strip(".-_")
    return slug or "model"


def profile_name(model: str, target_name: str, hardware: str, engine: str = DEFAULT_ENGINE) -> str:
    """``<model slug>.<target name>.<hardware>``: the name of a profile measured on a target, with
    ``-<engine>`` appended for an engine other than transformers (``….cpu-generic-vllm``), so profiles of
    two engines never overwrite each other."""
    name = f"{model_slug(model)}.{model_slug(target_name)}.{model_slug(hardware)}"
    return name if engine == DEFAULT_ENGINE else f"{name}-{model_slug(engine)}"


def run_sweep(
    config: SweepConfig,
    *,
    hardware: str,
    model_ref: ModelRef | None = None,
    cache_dir: Path | None = None,
    name: str | None = None,
    log: Log = print,
) -> MeasuredProfile:
    """Measure ``config``'s grid on this machine and return the profile (not saved: see ``save_sweep``).

    ``hardware`` is the hardware class the profile describes, and it also picks the estimate meter's
    nominal power. ``model_ref`` is a model already resolved to a directory. Without it, ``config.model``
    is resolved here (``cache_dir`` is where the demo model is built). ``name`` defaults to
    ``<model slug>.local.<hardware>`` (see :func:`profile_name`). ``config.engine`` runs the model.
    """
    import torch

    from hpcqueue.meters import get_meter
    from hpcqueue.models import resolve_model

    sweep_started = time.monotonic()
    if model_ref is None:
        model_ref = resolve_model(config.model, cache_dir=cache_dir)
    name = name or profile_name(config.model, "local", hardware, config.engine)
    meter = get_meter(config.meter, hardware=hardware, nominal_power_w=config.nominal_power_w)
    torch.manual_seed(config.seed)

    log(f"profile {name}: loading {config.model} from {model_ref.path} with {config.engine}")
    with meter.measure() as held:
        runner = load_runner(model_ref, config)
    load = held.measurement
    assert load is not None
    log(f"  model load: {load.duration_s:.2f} s, {load.total_energy_j:.2f} J ({load.method}, {load.meter})")

    log(f"  idle: metering {config.idle_s:g} s with nothing running")
    with meter.measure() as held:
        time.sleep(config.idle_s)
    idle = held.measurement
    assert idle is not None
    idle_w = idle_power_w(idle)
    log(f"  idle power: {sum(idle_w.values()):.3f} W {_fmt_domains(idle_w, 'W')}")

    prompts: dict[int, PromptSpec] = {}
    lengths = {*config.input_tokens, config.output_sweep_input_tokens}
    for n in sorted(lengths):
        prompts[n] = exact_length_prompt(runner.tokenizer, n)
    inexact = [
        {"nominal_tokens": p.nominal_tokens, "achieved_tokens": p.tokens}
        for p in prompts.values()
        if not p.exact
    ]
    for item in inexact:
        log(
            f"  note: no prompt of exactly {item['nominal_tokens']} tokens exists for this tokenizer; "
            f"using {item['achieved_tokens']} tokens"
        )

    context = runner.context_length
    skipped: list[dict[str, Any]] = []
    kv_limited: list[dict[str, Any]] = []
    oom_at: list[SweepPoint] = []
    rows: list[tuple[SweepPoint, int, bool, Trial]] = []
    order = shuffled(grid_points(config), config.seed)
    methods: set[str] = {load.method, idle.method}
    meters: dict[str, str] = {}
    for position, nominal in enumerate(order, start=1):
        prompt = prompts[nominal.input_tokens]
        point = dataclasses.replace(nominal, input_tokens=prompt.tokens)
        if context is not None and point.input_tokens + point.output_tokens > context:
            skipped.append(_skip(point, f"prompt + output exceed the model's context of {context} tokens"))
            log(f"  [{position}/{len(order)}] {point.label()}: skipped (longer than the context, {context})")
            continue
        blocker = next(
            (
                p
                for p in oom_at
                if p.sweep == point.sweep
                and point.batch_size >= p.batch_size
                and point.swept_tokens >= p.swept_tokens
            ),
            None,
        )
        if blocker is not None:
            skipped.append(_skip(point, f"out of memory at {blocker.label()}"))
            log(f"  [{position}/{len(order)}] {point.label()}: skipped (out of memory at a smaller point)")
            continue
        needed = point.batch_size * (point.input_tokens + point.output_tokens)
        if runner.kv_cache_tokens is not None and needed > runner.kv_cache_tokens:
            kv_limited.append({**dataclasses.asdict(point), "tokens": needed})
            log(
                f"  [{position}/{len(order)}] {point.label()}: note: its sequences need {needed} tokens of "
                f"KV cache, which holds {runner.kv_cache_tokens}: they do not all run at once"
            )

        def trial(point: SweepPoint = point, prompt: PromptSpec = prompt) -> Trial:
            with meter.measure() as held:
                tokens = runner.generate_exact(prompt.ids, point.output_tokens, point.batch_size)
            m = held.measurement
            assert m is not None
            return Trial(
                duration_s=m.duration_s,
                energy_raw_j=dict(m.energy_j),
                idle_j=idle_energy_j(idle_w, m.energy_j, m.duration_s),
                tokens=tokens,
                method=m.method,
                meter=m.meter,
                started_at=m.started_at,
            )

        try:
            warmups, trials = run_trials(trial, config)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            runner.release_memory()
            oom_at.append(point)
            skipped.append(_skip(point, f"out of memory: {exc}"))
            log(f"  [{position}/{len(order)}] {point.label()}: out of memory; larger batches skipped")
            continue
        rows += [(point, i, True, t) for i, t in enumerate(warmups)]
        rows += [(point, i, False, t) for i, t in enumerate(trials)]
        for t in (*warmups, *trials):
            methods.add(t.method)
            for domain in t.energy_raw_j:
                meters.setdefault(domain_group(domain), _meter_description(t.meter, t.method, load))
        runtimes = np.array([t.duration_s for t in trials])
        energies = np.array([sum(t.energy_j.values()) for t in trials])
        log(
            f"  [{position}/{len(order)}] {point.label()}: {len(trials)} trials, "
            f"runtime {runtimes.mean():.4f} s ± {_ci(runtimes):.4f}, energy {energies.mean():.3f} J ± "
            f"{_ci(energies):.3f} (idle subtracted)"
        )
    if not rows:
        raise HpcqueueError(
            f"profile {name}: no point could be measured ({len(skipped)} skipped: "
            f"{skipped[0]['reason'] if skipped else 'empty grid'}); lower the token counts or batch sizes"
        )
    trials_df = trials_table(rows)
    points = summarise(trials_df)
    duration_s = time.monotonic() - sweep_started
    meta = _meta(
        config,
        name=name,
        hardware=hardware,
        runner=runner,
        model_ref=model_ref,
        load=load,
        idle=idle,
        idle_w=idle_w,
        method="estimated" if "estimated" in methods else "measured",
        meters=meters
        or {domain_group(d): _meter_description(load.meter, load.method, load) for d in load.energy_j},
        skipped=skipped,
        inexact=inexact,
        kv_limited=kv_limited,
        duration_s=duration_s,
        torch_threads=torch.get_num_threads(),
    )
    log(f"profile {name}: {len(points)} points measured, {len(skipped)} skipped, in {duration_s:.1f} s")
    return MeasuredProfile(meta=meta, points=points, trials=trials_df)


def _skip(point: SweepPoint, reason: str) -> dict[str, Any]:
    return {**dataclasses.asdict(point), "reason": reason}


def _ci(values: np.ndarray) -> float:
    if len(values) < 2:
        return float("nan")
    return float(ci95_half_width(float(np.std(values, ddof=1)), len(values)))


def _fmt_domains(values: dict[str, float], unit: str) -> str:
    return "(" + ", ".join(f"{d} {v:.3f} {unit}" for d, v in sorted(values.items())) + ")"


def _meter_description(meter: str, method: str, sample: Measurement) -> str:
    formula = sample.details.get("formula") if sample.meter == meter else None
    text = f"{meter} ({method})"
    return f"{text}: {formula}" if formula else text


def _meta(
    config: SweepConfig,
    *,
    name: str,
    hardware: str,
    runner: SweepRunner,
    model_ref: ModelRef,
    load: Measurement,
    idle: Measurement,
    idle_w: dict[str, float],
    method: Literal["measured", "estimated"],
    meters: dict[str, str],
    skipped: list[dict[str, Any]],
    inexact: list[dict[str, int]],
    kv_limited: list[dict[str, Any]],
    duration_s: float,
    torch_threads: int,
) -> ProfileMeta:
    machine = fingerprint()
    software = {**software_versions(), "torch_threads": torch_threads, **runner.software()}
    engine_note = (
        f" Run with vLLM {software.get('vllm')}: a point's batch size is that many sequences submitted "
        "together and run concurrently, not one batched call."
        if runner.engine == "vllm"
        else ""
    )
    estimated_note = (
        " The energy figures are ESTIMATES (no energy counter was readable): nominal power × CPU-time share; "
        "they order workloads but are not measurements."
        if method == "estimated"
        else ""
    )
    return ProfileMeta(
        name=name,
        model=config.model,
        model_aliases=[],
        hardware=hardware,
        engine=runner.engine,
        system=f"{machine.get('cpu_model') or 'unknown CPU'}"
        + (f" + {len(machine['gpus'])}x {machine['gpus'][0]['name']}" if machine.get("gpus") else ""),
        source="measured",
        method=method,
        source_detail={
            "tool": "hpcqueue profile",
            "model_path": str(model_ref.path),
            "model_fingerprint": model_ref.fingerprint,
            "trials_file": TRIALS_FILE,
        },
        meters=meters,
        fingerprint=machine,
        software=software,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        idle_power_w=float(sum(idle_w.values())),
        idle_subtracted={domain_group(d): True for d in idle_w} or {"cpu": True},
        idle_subtraction=(
            f"idle power measured with the same meter over {idle.duration_s:.2f} s before the sweep (after "
            "the model load), per domain; idle power × each call's duration subtracted from that call, per "
            f"domain. Raw figures are in {TRIALS_FILE}."
        ),
        kv_cache=config.kv_cache,
        batch_size_semantics=runner.batch_size_semantics,
        filter=(
            f"{config.warmup_trials} warm-up call(s) per point dropped; each point repeated until the "
            f"95 % CI half-width of runtime <= {config.ci_half_width_s} s (at least {config.min_trials}, "
            f"at most {config.max_trials} calls); points in a seeded random order (seed {config.seed})"
        ),
        notes=config.describe() + "." + engine_note + estimated_note,
        extra={
            "load_time_s": load.duration_s,
            "load_energy_j": load.total_energy_j,
            "model_load": load.to_dict(),
            "idle": idle.to_dict(),
            "idle_power_w_by_domain": idle_w,
            "sweep_config": dataclasses.asdict(config),
            "sweep_duration_s": duration_s,
            "skipped_points": skipped,
            "inexact_prompts": inexact,
            **({"kv_cache_limited_points": kv_limited} if runner.kv_cache_tokens is not None else {}),
        },
    )


def save_sweep(profile: Profile, out_dir: str | Path) -> Path:
    """Save a measured profile under ``out_dir/<name>/``: ``meta.json`` and ``points.csv`` (through
    ``store.save_profile``) and, for a ``MeasuredProfile``, ``trials.csv`` with every metered call."""
    directory = save_profile(profile, out_dir)
    trials = getattr(profile, "trials", None)
    if isinstance(trials, pd.DataFrame):
        atomic_write_text(directory / TRIALS_FILE, trials.to_csv(index=False, lineterminator="\n"))
    return directory


# ------------------------------------------------------------------------------------- as a job


def sweep_job(
    config: SweepConfig,
    hardware: str,
    name: str,
    model_name: str,
    model_path: str,
    cache_dir: str | None,
    out_dir: str,
) -> str:
    """What the profiling job runs (``hpcqueue.profiles.runs.profile_target`` submits it): resolve the model
    on the node, sweep, save; returns the profile directory."""
    from hpcqueue.models import ModelRef, model_fingerprint, resolve_model

    path = Path(model_path)
    if (path / "config.json").is_file():
        ref = ModelRef(name=model_name, path=path, fingerprint=model_fingerprint(path))
    else:
        ref = resolve_model(model_name, cache_dir=Path(cache_dir) if cache_dir else None)

    def log(message: str) -> None:
        print(message, flush=True)

    profile = run_sweep(config, hardware=hardware, model_ref=ref, name=name, log=log)
    directory = save_sweep(profile, out_dir)
    log(f"saved profile {name} to {directory}")
    return str(directory)


#: The name profiling jobs queued by hpcqueue 0.1 were pickled with (submitit pickles by module path).
_sweep_job = sweep_job


def _main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a debugging entry point
    import argparse

    parser = argparse.ArgumentParser(description="Run a profile sweep on this machine and save it.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", default="hpcqueue-demo")
    parser.add_argument("--hardware", default="cpu-generic")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=("transformers", "vllm"))
    args = parser.parse_args(argv)
    config = SweepConfig.quick(args.model) if args.quick else SweepConfig(model=args.model)
    config = dataclasses.replace(config, engine=args.engine)
    profile = run_sweep(config, hardware=args.hardware)
    print(save_sweep(profile, args.out_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
