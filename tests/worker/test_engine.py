"""Batched generation with the real demo model (tiny, runs in seconds on a CPU)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hpcqueue.ingest import Request, request_text
from hpcqueue.meters import get_meter
from hpcqueue.models import ModelRef, Tokenizer
from hpcqueue.worker.engine import ERROR_CONTEXT, ERROR_GENERATION, Engine


@pytest.fixture(scope="module")
def engine(demo: ModelRef) -> Engine:
    return Engine(demo, device="cpu", batch_size=16)


def make_request(line: int, prompt: str | None = None, **fields: Any) -> Request:
    base: dict[str, Any] = {
        "line": line,
        "id": f"q{line}",
        "kind": "prompt",
        "prompt": prompt,
        "messages": None,
        "max_new_tokens": 12,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "seed": None,
        "stop": (),
        "metadata": None,
        "openai_url": None,
        "openai_model": None,
    }
    base.update(fields)
    return Request(**base)


def workload(n: int = 40) -> list[Request]:
    """Prompts of many lengths and limits, in an order unrelated to their length."""
    requests = []
    for i in range(1, n + 1):
        words = "the quiet node runs the queue and waits " * (1 + (i * 7) % 6)
        requests.append(make_request(i, f"Request {i}: {words}", max_new_tokens=4 + (i * 5) % 17))
    requests.append(
        make_request(
            n + 1,
            kind="chat",
            messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why wait?"}),
        )
    )
    return requests


def comparable(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    keys = ("line", "id", "text", "input_tokens", "output_tokens", "finish_reason", "error")
    return [tuple(r[k] for k in keys) for r in records]


def test_batched_greedy_equals_one_at_a_time(demo: ModelRef, engine: Engine) -> None:
    requests = workload()
    batched = engine.generate(requests)
    single = Engine(demo, device="cpu", batch_size=1).generate(requests)
    # Left padding with an attention mask gives the same greedy tokens as running each prompt alone: the
    # demo model's logits are peaked enough that float rounding in padded batches never flips an argmax.
    assert comparable(batched) == comparable(single)
    assert [r["line"] for r in batched] == [r.line for r in requests]


def test_records_follow_the_output_format(engine: Engine, demo: ModelRef) -> None:
    requests = workload(6)
    records = engine.generate(requests)
    tokenizer = Tokenizer.load(demo.path)
    for request, record in zip(requests, records, strict=True):
        assert set(record) == {
            "line", "id", "text", "input_tokens", "output_tokens", "finish_reason", "error",
            "started_at", "ended_at", "energy_j",
        }  # fmt: skip
        assert record["error"] is None
        assert isinstance(record["text"], str)
        assert record["started_at"] <= record["ended_at"]
        # the worker counts the same input tokens as the driver
        text, add_special = request_text(tokenizer, request)
        assert record["input_tokens"] == len(tokenizer.encode(text, add_special_tokens=add_special))


def test_each_row_stops_at_its_own_limit(engine: Engine) -> None:
    limits = [1, 3, 7, 30]
    requests = [
        make_request(i + 1, "The quiet node runs the queue.", max_new_tokens=n) for i, n in enumerate(limits)
    ]
    records = engine.generate(requests)
    for limit, record in zip(limits, records, strict=True):
        if record["finish_reason"] == "length":
            assert record["output_tokens"] == limit
        else:
            assert record["finish_reason"] == "stop"
            assert record["output_tokens"] < limit
    assert [r["finish_reason"] for r in records].count("length") >= 3


def test_stop_string_cuts_the_text(engine: Engine) -> None:
    base = make_request(1, "Why does every task wait for the river?", max_new_tokens=40)
    (free,) = engine.generate([base])
    assert free["finish_reason"] == "length" and len(free["text"]) > 20
    stop = free["text"][10:14]
    expected = free["text"][: free["text"].find(stop)]
    (stopped,) = engine.generate([dataclasses.replace(base, stop=("never-produced", stop))])
    assert stopped["text"] == expected
    assert stopped["finish_reason"] == "stop"
    assert 0 < stopped["output_tokens"] < free["output_tokens"]
    # the stop string is not reached within the first few tokens: that row ends on its limit
    (short,) = engine.generate([dataclasses.replace(base, stop=(stop,), max_new_tokens=1)])
    assert short["finish_reason"] == "length" and short["output_tokens"] == 1


def test_too_long_request_gets_an_error_record_and_others_run(engine: Engine) -> None:
    requests = [
        make_request(1, "A short one."),
        make_request(2, "the queue " * 50, max_new_tokens=4090),
        make_request(3, "Another short one."),
    ]
    batches: list[tuple[list[int], Any]] = []
    records = engine.generate(requests, on_batch=lambda out, m: batches.append(([r["line"] for r in out], m)))
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[1]["error"]["code"] == ERROR_CONTEXT
    assert "4096" in records[1]["error"]["message"] and "max_new_tokens" in records[1]["error"]["message"]
    assert records[1]["text"] is None and records[1]["finish_reason"] is None
    assert records[0]["error"] is None and records[2]["error"] is None
    assert ([2], None) in batches  # reported to the worker too, so partial.jsonl holds every request


def test_on_batch_gets_each_batch_and_its_measurement(demo: ModelRef) -> None:
    engine = Engine(demo, device="cpu", batch_size=4)
    requests = workload(10)  # 11 requests: batches of 4, 4, 3
    seen: list[tuple[list[int], Any]] = []
    engine.generate(
        requests,
        on_batch=lambda out, m: seen.append(([r["line"] for r in out], m)),
        make_meter=lambda: get_meter("estimate", hardware="cpu-generic"),
    )
    assert [len(lines) for lines, _ in seen] == [4, 4, 3]
    assert sorted(line for lines, _ in seen for line in lines) == [r.line for r in requests]
    for _, measurement in seen:
        assert measurement.method == "estimated"
        assert measurement.total_energy_j > 0


def test_batches_are_sorted_by_input_length(engine: Engine) -> None:
    requests = workload(20)
    seen: list[list[int]] = []
    engine.generate(requests, on_batch=lambda out, m: seen.append([r["input_tokens"] for r in out]))
    flat = [n for batch in seen for n in batch]
    assert flat == sorted(flat)


def test_seeded_sampling_is_reproducible_and_greedy_is_not_mixed_in(engine: Engine) -> None:
    sampled = [
        make_request(i, f"Sampling prompt {i}", temperature=1.0, top_p=0.95, seed=7, max_new_tokens=16)
        for i in range(1, 5)
    ]
    greedy = [make_request(10 + i, f"Sampling prompt {i}", max_new_tokens=16) for i in range(1, 5)]
    groups: list[list[int]] = []
    first = engine.generate(
        [*sampled, *greedy], on_batch=lambda out, m: groups.append([r["line"] for r in out])
    )
    second = engine.generate([*sampled, *greedy])
    assert comparable(first) == comparable(second)
    # sampled and greedy requests ran in separate batches
    assert sorted(sorted(g) for g in groups) == [[1, 2, 3, 4], [11, 12, 13, 14]]
    other_seed = engine.generate([dataclasses.replace(r, seed=8) for r in sampled])
    assert [r["text"] for r in other_seed] != [r["text"] for r in first[:4]]
    assert [r["text"] for r in first[:4]] != [r["text"] for r in first[4:]]


def test_failed_batch_is_retried_row_by_row(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = workload(5)
    expected = comparable(engine.generate(requests))
    real_generate = engine.model.generate

    def generate_out_of_memory_for_batches(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate_out_of_memory_for_batches)
    assert comparable(engine.generate(requests)) == expected


def test_a_request_that_fails_alone_gets_an_error_record(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = workload(5)
    poison = engine.encode(requests[2])
    real_generate = engine.model.generate

    def generate_failing_on_one_prompt(*args: Any, **kwargs: Any) -> Any:
        rows = kwargs["input_ids"].tolist()
        if any(row[len(row) - len(poison) :] == poison for row in rows):
            raise RuntimeError("device-side assert triggered")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate_failing_on_one_prompt)
    records = engine.generate(requests)
    assert [r["line"] for r in records] == [r.line for r in requests]
    failed = [r for r in records if r["error"] is not None]
    assert [r["line"] for r in failed] == [requests[2].line]
    assert failed[0]["error"]["code"] == ERROR_GENERATION
    assert "device-side assert" in failed[0]["error"]["message"]
    assert failed[0]["input_tokens"] == len(poison)


def test_invalid_settings_are_refused(demo: ModelRef) -> None:
    from hpcqueue.errors import ModelError

    with pytest.raises(ModelError, match="batch_size"):
        Engine(demo, batch_size=0)
    with pytest.raises(ModelError, match="valid values: auto, float32, float16, bfloat16"):
        Engine(demo, dtype="float8")


def test_batches_stay_within_the_padded_token_budget(demo: ModelRef) -> None:
    """Long prompts go in smaller batches; a prompt longer than the whole budget still runs, alone."""
    engine = Engine(demo, device="cpu", batch_size=16, max_batch_tokens=600)
    requests = [make_request(i, "energy aware queue " * (2 + 6 * i), max_new_tokens=8) for i in range(1, 13)]
    requests.append(make_request(99, "long prompt " * 400, max_new_tokens=8))
    widths: list[tuple[int, int]] = []

    def record(outputs: list[dict[str, Any]], measurement: Any) -> None:
        widths.append((len(outputs), max(o["input_tokens"] for o in outputs) + 8))

    outputs = engine.generate(requests, on_batch=record)
    assert len(outputs) == len(requests) and all(o["error"] is None for o in outputs)
    assert sum(n for n, _ in widths) == len(requests)
    assert len(widths) > 2  # the budget split what batch_size alone would have kept in one batch
    for n, width in widths:
        assert n * width <= 600 or n == 1
    assert (1, max(w for _, w in widths)) in widths  # the over-long prompt ran by itself
