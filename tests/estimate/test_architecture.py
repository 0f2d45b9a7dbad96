"""The analytic model's view of a transformer: its shape from config.json, its parameter count (checked
against the published totals) and the work of prefill and decode with and without a KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcqueue.errors import ModelError
from hpcqueue.estimate import KNOWN, architecture_of, read_config
from hpcqueue.models import DEMO_MODEL, ModelRef


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("llama-2-7b", 6_738_415_616),  # the exact totals of the released checkpoints
        ("mistral-7b", 7_241_732_096),
        ("gpt2", 124_439_808),  # biases and position embeddings are left out: within 1 %
    ],
)
def test_parameter_counts_match_the_published_models(name: str, published: int) -> None:
    assert KNOWN[name].parameters() == pytest.approx(published, rel=0.01 if name == "gpt2" else 0)


def test_the_demo_model_s_config_gives_its_exact_parameter_count(demo: ModelRef) -> None:
    arch = read_config(demo.path)
    assert arch.name == demo.path.name and demo.name == DEMO_MODEL
    assert (arch.layers, arch.hidden, arch.heads, arch.kv_heads, arch.head_dim) == (2, 128, 4, 4, 32)
    assert arch.tied_embeddings and arch.dtype == "float32"
    assert arch.parameters() == 590_464  # what torch counts for the checkpoint


def test_decode_with_a_cache_is_linear_in_the_context_and_without_one_quadratic() -> None:
    arch = KNOWN["llama-2-7b"]
    cached = [arch.decode_step(c).flops for c in (100, 200, 400)]
    assert cached[2] - cached[1] == pytest.approx(2 * (cached[1] - cached[0]))
    assert cached[0] == pytest.approx(2 * arch.parameters(), rel=0.05)  # ≈ 2 FLOPs per weight per token
    rerun = [arch.decode_step(c, kv_cache=False).flops for c in (100, 200)]
    assert rerun[1] > 1.9 * rerun[0]  # the whole sequence again at every step
    assert arch.decode_step(100, kv_cache=False).flops == arch.prefill(101).flops


def test_a_batch_reads_the_weights_once_and_each_sequence_its_own_cache() -> None:
    arch = KNOWN["mistral-7b"]
    step = arch.decode_step(1000)
    assert step.bytes == arch.weight_bytes() + 1001 * arch.kv_bytes_per_token()
    assert arch.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2  # grouped-query attention: 8 kv heads
    eight = step.batched(8)
    assert eight.flops == 8 * step.flops
    assert eight.bytes == arch.weight_bytes() + 8 * 1001 * arch.kv_bytes_per_token()
    with pytest.raises(ValueError, match="at least 1"):
        step.batched(0)


def test_configs_of_other_families_are_read(tmp_path: Path) -> None:
    falcon = {
        "model_type": "falcon",
        "num_hidden_layers": 32,
        "hidden_size": 4544,
        "num_attention_heads": 71,
        "multi_query": True,
        "vocab_size": 65024,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(falcon))
    arch = read_config(tmp_path)
    assert (arch.kv_heads, arch.intermediate, arch.gated_mlp, arch.dtype) == (1, 4 * 4544, False, "bfloat16")
    assert arch == KNOWN["falcon-7b"].__class__(**{**KNOWN["falcon-7b"].__dict__, "name": tmp_path.name})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read"),
        ({"hidden_size": 64, "vocab_size": 10}, "num_hidden_layers or n_layer"),
        ({"num_hidden_layers": 0, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 9}, "positive"),
        (
            {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "vocab_size": 9,
                "dtype": "q4",
            },
            "dtype 'q4'",
        ),
    ],
)
def test_bad_configs_say_what_is_missing_or_wrong(tmp_path: Path, content: object, message: str) -> None:
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelError, match=message) as error:
        read_config(tmp_path)
    assert "config.json" in str(error.value)


def test_a_model_is_found_by_name_by_directory_or_as_the_demo(
    tmp_path: Path, demo: ModelRef, hq_cache: Path
) -> None:
    assert architecture_of("llama-2-7b") is KNOWN["llama-2-7b"]
    only_config = tmp_path / "my-model"
    only_config.mkdir()
    (only_config / "config.json").write_text((demo.path / "config.json").read_text())
    from_dir = architecture_of(str(only_config))  # config.json is all an estimate needs
    assert from_dir.parameters() == 590_464 and from_dir.name == str(only_config)
    assert architecture_of(DEMO_MODEL, cache_dir=hq_cache).parameters() == 590_464
    with pytest.raises(ModelError, match="known by name: llama-2-7b"):
        architecture_of("no-such/model-anywhere", cache_dir=hq_cache)
