"""Model resolution, the offline demo model, and the light tokenizer against transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from hpcqueue.errors import ModelError
from hpcqueue.ingest import count_input_tokens
from hpcqueue.models import (
    DEMO_MODEL,
    ModelRef,
    Tokenizer,
    build_demo_model,
    resolve_model,
)
from hpcqueue.models.tokenizer import _ENCODE_CHUNK
from tests.conftest import REPO

PROMPTS = [
    "The quiet node runs the queue.",
    "Why does every task wait?",
    "  leading and trailing spaces  ",
    "a",
    "Line one\nline two\n\ttabbed",
    "Unicode: ünïcödé, 日本語, emoji 🙂 and a zero-width\u200bjoiner",
    "Text that mentions <s> and </s> and <pad> literally",
    "1234567890 " * 40,
]
CHATS = [
    [{"role": "user", "content": "What does the queue hold?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The long river."},
        {"role": "user", "content": "Another one, with ünïcödé?"},
    ],
    [{"role": "user", "content": "A message that says </s> and <s> inside."}],
]

CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.first %}"
    "{{ raise_exception('chat cannot start with assistant') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}"
)


def test_demo_model_is_cached_where_promised(demo: ModelRef, hq_cache: Path) -> None:
    assert demo.path == hq_cache / "models" / "hpcqueue-demo-v1"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (demo.path / name).is_file(), name
    again = resolve_model(DEMO_MODEL, cache_dir=hq_cache)
    assert again == demo
    assert len(demo.fingerprint) == 16
    # no half-built directories are left next to it
    assert sorted(p.name for p in (hq_cache / "models").iterdir() if not p.name.endswith(".lock")) == [
        "hpcqueue-demo-v1"
    ]


def test_demo_build_is_deterministic(demo: ModelRef, tmp_path: Path) -> None:
    build_demo_model(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (demo.path / name).read_bytes(), name
    first = load_file(demo.path / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].equal(second[key]), key


def test_demo_tokenizer_config_names_a_public_class(demo: ModelRef, hf_tokenizer) -> None:
    config = json.loads((demo.path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert hf_tokenizer.padding_side == "left"
    assert hf_tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )


def test_concurrent_first_use_builds_one_model(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from hpcqueue.models import ensure_demo_model; "
        "print(ensure_demo_model(Path(sys.argv[1])))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    paths = {proc.communicate(timeout=300)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert paths == {str(tmp_path / "models" / "hpcqueue-demo-v1")}
    entries = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock"))
    assert entries == ["hpcqueue-demo-v1"]
    assert Tokenizer.load(tmp_path / "models" / "hpcqueue-demo-v1").encode("queue")


def test_local_directory_is_used_as_is(demo: ModelRef) -> None:
    ref = resolve_model(str(demo.path))
    assert ref.path == demo.path
    assert ref.fingerprint == demo.fingerprint


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"has no config\.json"):
        resolve_model(str(tmp_path))


def test_uncached_hub_model_says_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        resolve_model("hpcqueue-tests/no-such-model")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "hf download hpcqueue-tests/no-such-model" in message
    assert "HF_HOME" in message


def test_light_tokenizer_counts_equal_transformers(demo: ModelRef, hf_tokenizer) -> None:
    tokenizer = Tokenizer.load(demo.path)
    table = pd.DataFrame(
        {
            "kind": ["prompt"] * len(PROMPTS) + ["chat"] * len(CHATS),
            "text": [*PROMPTS, *([None] * len(CHATS))],
            "messages": [*([None] * len(PROMPTS)), *CHATS],
        }
    )
    counts = count_input_tokens(tokenizer, table)
    assert counts.dtype.name == "int64"
    expected = [len(hf_tokenizer(p)["input_ids"]) for p in PROMPTS] + [
        len(hf_tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True)["input_ids"])
        for c in CHATS
    ]
    assert counts.tolist() == expected
    # chat rows now carry the text the model will see
    rendered = [
        hf_tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS
    ]
    assert table["text"].tolist()[len(PROMPTS) :] == rendered
    assert all(tokenizer.encode(p) == hf_tokenizer(p)["input_ids"] for p in PROMPTS)


def test_counts_are_right_across_encode_chunks(demo: ModelRef) -> None:
    tokenizer = Tokenizer.load(demo.path)
    texts = [f"Task {i} waits " + "on the node " * (i % 7) for i in range(_ENCODE_CHUNK + 37)]
    counts = tokenizer.count(texts)
    for i in (0, 1, _ENCODE_CHUNK - 1, _ENCODE_CHUNK, len(texts) - 1):
        assert counts[i] == len(tokenizer.encode(texts[i])), i


def test_demo_chat_template_matches_transformers(demo: ModelRef, hf_tokenizer) -> None:
    tokenizer = Tokenizer.load(demo.path)
    for chat in CHATS:
        expected = hf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tokenizer.render_chat(chat) == expected
    assert tokenizer.render_chat(CHATS[0]) == "<s><|user|>\nWhat does the queue hold?\n<|assistant|>\n"


def _copy_model(demo: ModelRef, dest: Path) -> Path:
    shutil.copytree(demo.path, dest)
    return dest


def test_hub_style_template_matches_transformers(demo: ModelRef, tmp_path: Path) -> None:
    path = _copy_model(demo, tmp_path / "chatml")
    (path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    tokenizer = Tokenizer.load(path)
    hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for chat in CHATS:
        assert tokenizer.render_chat(chat) == hf.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
    bad = [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "No."}]
    with pytest.raises(ModelError, match="chat cannot start with assistant"):
        tokenizer.render_chat(bad)


def test_template_in_tokenizer_config_is_found(demo: ModelRef, tmp_path: Path) -> None:
    path = _copy_model(demo, tmp_path / "legacy")
    template = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.load(path).render_chat(CHATS[0]).startswith("<s><|user|>\n")


def test_model_without_template_uses_the_plain_format(demo: ModelRef, tmp_path: Path) -> None:
    path = _copy_model(demo, tmp_path / "plain")
    (path / "chat_template.jinja").unlink()
    tokenizer = Tokenizer.load(path)
    assert tokenizer.chat_template is None
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.render_chat(chat) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    table = pd.DataFrame({"kind": ["chat"], "text": [None], "messages": [chat]})
    # without a template the tokenizer adds its beginning-of-sequence token itself
    assert count_input_tokens(tokenizer, table).tolist() == [
        len(tokenizer.encode(tokenizer.render_chat(chat)))
    ]
    assert tokenizer.encode("Hi")[0] == tokenizer.backend.token_to_id("<s>")


def test_context_length_comes_from_the_model_config(demo: ModelRef, tmp_path: Path) -> None:
    assert Tokenizer.load(demo.path).context_length == 4096
    path = _copy_model(demo, tmp_path / "noctx")
    config = json.loads((path / "config.json").read_text())
    del config["max_position_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = 512
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert Tokenizer.load(path).context_length == 512


def test_missing_tokenizer_json_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no tokenizer\.json.*save_pretrained"):
        Tokenizer.load(tmp_path)
