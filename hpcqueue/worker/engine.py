"""Batched inference with transformers: length-bucketed, left-padded generation.

``Engine`` loads a model once and turns ``Request`` objects into output records (the format of
``partial.jsonl`` / ``output.jsonl`` in docs/internals.md, without the attributed energy, which the worker
adds). Throughput on both CPUs and GPUs comes from batching: requests with the same sampling settings are
sorted by input length and cut into batches of at most ``batch_size`` requests and ``max_batch_tokens`` padded
tokens (rows × the longest row's prompt + token limit), so little compute is spent on padding and a batch of
long prompts does not blow up memory.

A request that cannot run never takes the task down with it: one whose input plus ``max_new_tokens`` does
not fit the model's context gets an error record at once; a batch that raises (out of memory, a kernel
error) is retried one request at a time, and a request that fails alone gets an error record.

The worker reaches it through the seam it shares with ``vllm_engine.VllmEngine``: ``name`` and ``version``
(the library's), ``attribution_rule`` and ``attributes_energy`` (this engine leaves the energy to the worker,
which splits each batch's measurement with ``token-share-v1``), ``context_length``, ``encode``, ``generate``
and ``close``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from hpcqueue.errors import ModelError, StopRequested
from hpcqueue.ingest import Request, request_text
from hpcqueue.models import ModelRef, Tokenizer
from hpcqueue.worker.attribution import ATTRIBUTION_RULE

if TYPE_CHECKING:
    from hpcqueue.meters.base import Measurement, Meter

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
OnBatch = Callable[[list[dict[str, Any]], "Measurement | None"], None]
MakeMeter = Callable[[], "Meter"]
ShouldStop = Callable[[], bool]
DTYPES = ("auto", "float32", "float16", "bfloat16")

#: Error codes of output records written by the engines.
ERROR_CONTEXT = "context_length_exceeded"
ERROR_GENERATION = "generation_failed"
ERROR_CHAT = "invalid_chat"


#: Padded tokens per generation batch. Long prompts go in smaller batches, short ones fill ``batch_size``.
DEFAULT_MAX_BATCH_TOKENS = 8192


@dataclass
class _Prepared:
    index: int  # position in the caller's list
    request: Request
    ids: list[int]
    sampling: tuple[float | None, float | None, int | None, int | None]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch as is."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` → bfloat16 on GPUs that support it (else float16), float32 on CPUs."""
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported; valid values: {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


class Engine:
    """A loaded model and its tokenizer, ready to generate for batches of requests."""

    name: ClassVar[str] = "transformers"
    #: The worker splits each batch's measurement over the batch's records under this rule.
    attribution_rule: ClassVar[str] = ATTRIBUTION_RULE
    attributes_energy: ClassVar[bool] = False

    model: Any  # a transformers causal LM (typed loosely: its generate() overloads defeat type checkers)
    tokenizer: Any
    version: str  # transformers.__version__

    def __init__(
        self,
        model: ModelRef,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.version = str(transformers.__version__)
        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, not {batch_size}")
        self.model_ref = model
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.light = Tokenizer.load(model.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=self.dtype, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {model.name!r} from {model.path}: {exc}") from exc
        self.model.to(self.device)
        self.model.eval()
        self._torch = torch
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            for value in source if isinstance(source, (list, tuple)) else [source]:
                if int(value) not in ids:
                    ids.append(int(value))
        if not ids:
            raise ModelError(f"model {self.model_ref.name!r} defines no end-of-sequence token")
        return ids

    @staticmethod
    def library_version() -> str:
        """``transformers.__version__``, for a task that needed no engine (every request resumed)."""
        import transformers

        return str(transformers.__version__)

    def close(self) -> None:
        """Nothing runs outside this object: the model is freed when the engine is dropped."""

    @property
    def context_length(self) -> int | None:
        """Most tokens (input + output) one request may use."""
        return self.light.context_length

    def encode(self, request: Request) -> list[int]:
        """Input token ids of a request, from the text the driver counted
        (``hpcqueue.ingest.request_text``)."""
        text, add_special = request_text(self.light, request)
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def generate(
        self,
        requests: Sequence[Request],
        *,
        on_batch: OnBatch | None = None,
        make_meter: MakeMeter | None = None,
        should_stop: ShouldStop | None = None,
    ) -> list[dict[str, Any]]:
        """Generate for every request; return one output record per request, in the order given.

        ``on_batch(outputs, measurement)`` is called after each generation batch with that batch's records
        and the ``Measurement`` of a meter from ``make_meter()`` run around it (None without ``make_meter``,
        and for requests rejected before any generation). ``should_stop()`` is asked before each batch;
        when it says yes, ``StopRequested`` is raised and the batches not started are left undone.
        """
        results: list[dict[str, Any] | None] = [None] * len(requests)
        runnable: list[_Prepared] = []
        rejected: list[dict[str, Any]] = []
        limit = self.context_length
        for index, request in enumerate(requests):
            now = time.time()
            try:
                ids = self.encode(request)
            except ModelError as exc:
                rejected.append(_error_record(request, None, ERROR_CHAT, str(exc), now))
                results[index] = rejected[-1]
                continue
            if limit is not None and len(ids) + request.max_new_tokens > limit:
                message = (
                    f"input ({len(ids)} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds the "
                    f"model's context length ({limit} tokens): shorten the prompt or lower max_new_tokens"
                )
                rejected.append(_error_record(request, len(ids), ERROR_CONTEXT, message, now))
                results[index] = rejected[-1]
                continue
            runnable.append(_Prepared(index, request, ids, _sampling_key(request)))
        if rejected and on_batch is not None:
            on_batch(rejected, None)

        for batch in self._batches(runnable):
            if should_stop is not None and should_stop():
                raise StopRequested()
            meter = make_meter() if make_meter is not None else None
            if meter is not None:
                meter.start()
            try:
                records = self._run_batch_or_rows(batch)
            finally:
                measurement = meter.stop() if meter is not None else None
            for prepared, record in zip(batch, records, strict=True):
                results[prepared.index] = record
            if on_batch is not None:
                on_batch(records, measurement)
        return [r for r in results if r is not None]

    def _batches(self, prepared: list[_Prepared]) -> list[list[_Prepared]]:
        """Group by sampling settings, sort each group by input length, cut into batches."""
        groups: dict[tuple[Any, ...], list[_Prepared]] = {}
        for item in prepared:
            groups.setdefault(item.sampling, []).append(item)
        batches: list[list[_Prepared]] = []
        for key in sorted(groups, key=repr):
            group = sorted(groups[key], key=lambda p: (len(p.ids), p.request.line))
            batches += self._cut(group)
        return batches

    def _cut(self, group: list[_Prepared]) -> list[list[_Prepared]]:
        """Cut length-sorted requests into batches within ``batch_size`` rows and ``max_batch_tokens`` padded
        tokens; a single request longer than the budget still runs, alone."""
        batches: list[list[_Prepared]] = []
        current: list[_Prepared] = []
        width = 0  # the padded row width of ``current``: longest prompt + largest token limit
        for item in group:
            item_width = len(item.ids) + item.request.max_new_tokens
            new_width = max(width, item_width)
            over_budget = (
                self.max_batch_tokens is not None and (len(current) + 1) * new_width > self.max_batch_tokens
            )
            if current and (len(current) >= self.batch_size or over_budget):
                batches.append(current)
                current, new_width = [], item_width
            current.append(item)
            width = new_width
        if current:
            batches.append(current)
        return batches

    def _run_batch_or_rows(self, batch: list[_Prepared]) -> list[dict[str, Any]]:
        try:
            return self._run_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [self._failed(batch[0], exc)]
            log.warning("a batch of %d requests failed (%s); retrying them one by one", len(batch), exc)
            self._release_memory()
        records = []
        for item in batch:
            try:
                records += self._run_batch([item])
            except Exception as exc:
                records.append(self._failed(item, exc))
                self._release_memory()
        return records

    def _failed(self, item: _Prepared, exc: BaseException) -> dict[str, Any]:
        log.warning("request %s (line %d) failed: %s", item.request.id, item.request.line, exc)
        message = f"{type(exc).__name__}: {exc}"
        return _error_record(item.request, len(item.ids), ERROR_GENERATION, message, time.time())

    def _release_memory(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def _run_batch(self, batch: list[_Prepared]) -> list[dict[str, Any]]:
        from transformers import StoppingCriteriaList

        torch = self._torch
        started_at = time.time()
        width = max(len(p.ids) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            if item.ids:
                input_ids[row, width - len(item.ids) :] = torch.tensor(item.ids, dtype=torch.long)
                attention_mask[row, width - len(item.ids) :] = 1
        limits = [p.request.max_new_tokens for p in batch]
        stops = [p.request.stop for p in batch]
        temperature, top_p, top_k, seed = batch[0].sampling
        config = self._generation_config(max(limits), temperature, top_p, top_k)
        criteria = _RowStop(self.tokenizer, width, limits, stops)
        generator_state = None
        if temperature is not None and seed is not None:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            if self.device.startswith("cuda"):
                torch.cuda.manual_seed_all(seed)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([criteria]),
                )
        finally:
            if generator_state is not None:
                torch.random.set_rng_state(generator_state)
        ended_at = time.time()
        new_tokens = output[:, width:].tolist()
        return [
            self._record(item, tokens, started_at, ended_at)
            for item, tokens in zip(batch, new_tokens, strict=True)
        ]

    def _generation_config(
        self, max_new_tokens: int, temperature: float | None, top_p: float | None, top_k: int | None
    ) -> Any:
        from transformers import GenerationConfig

        settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
            "use_cache": True,
        }
        if temperature is None:
            settings.update(do_sample=False)
        else:
            settings.update(
                do_sample=True,
                temperature=temperature,
                top_p=1.0 if top_p is None else top_p,
                top_k=0 if top_k is None else top_k,
            )
        return GenerationConfig(**settings)

    def _record(
        self, item: _Prepared, tokens: list[int], started_at: float, ended_at: float
    ) -> dict[str, Any]:
        request = item.request
        tokens = tokens[: request.max_new_tokens]
        finish: FinishReason = "length"
        eos = set(self.eos_ids)
        for position, token in enumerate(tokens):
            if token in eos:
                tokens, finish = tokens[:position], "stop"
                break
        text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
        if request.stop:
            cut = _first_stop(text, request.stop)
            if cut is not None:
                # the stop string that ended the row: the shortest one there (it was complete first)
                stop_chars = min(len(s) for s in request.stop if s and text.startswith(s, cut))
                tokens = tokens[: self._tokens_covering(tokens, cut + stop_chars - 1)]
                text, finish = text[:cut], "stop"
        return _output_record(request, len(item.ids), text, len(tokens), finish, started_at, ended_at)

    def _tokens_covering(self, tokens: list[int], n_chars: int) -> int:
        """Fewest leading tokens whose text goes past ``n_chars`` characters. Given the position of a stop
        string's last character: the tokens up to and including the one that completed the stop string (those
        were generated, so they count; vLLM counts them too)."""
        low, high = 0, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if len(self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)) > n_chars:
                high = mid
            else:
                low = mid + 1
        return low


def _sampling_key(request: Request) -> tuple[float | None, float | None, int | None, int | None]:
    """Requests batch together only when they sample the same way; greedy ignores the sampling knobs."""
    if not request.temperature:
        return (None, None, None, None)
    return (float(request.temperature), request.top_p, request.top_k, request.seed)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _output_record(
    request: Request,
    input_tokens: int,
    text: str,
    output_tokens: int,
    finish: FinishReason,
    started_at: float,
    ended_at: float,
) -> dict[str, Any]:
    """The output record of a request that generated (docs/internals.md), energy left to attribution."""
    return {
        "line": request.line,
        "id": request.id,
        "text": text,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "finish_reason": finish,
        "error": None,
        "started_at": started_at,
        "ended_at": ended_at,
        "energy_j": None,
    }


def _error_record(
    request: Request, input_tokens: int | None, code: str, message: str, now: float
) -> dict[str, Any]:
    return {
        "line": request.line,
        "id": request.id,
        "text": None,
        "input_tokens": input_tokens,
        "output_tokens": 0,
        "finish_reason": None,
        "error": {"code": code, "message": message},
        "started_at": now,
        "ended_at": now,
        "energy_j": None,
    }


class _RowStop:
    """Stopping criterion per row: a row is done at its own token limit or once it produced a stop string.

    transformers pads a finished row while the others go on, and ends the batch when every row is done,
    so a batch with one long request does not keep the short ones generating.
    """

    def __init__(
        self, tokenizer: Any, prompt_width: int, limits: list[int], stops: list[tuple[str, ...]]
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.limits = limits
        self.stops = stops
        # Enough trailing tokens to hold the longest stop string (a token is at least one byte).
        self.tail = [max((len(s.encode()) for s in row), default=0) + 4 for row in stops]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, limit in enumerate(self.limits):
            if generated >= limit:
                done[row] = True
            elif self.stops[row] and generated > 0:
                tail = input_ids[row, max(self.prompt_width, input_ids.shape[1] - self.tail[row]) :].tolist()
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                done[row] = any(s and s in text for s in self.stops[row])
        return done
