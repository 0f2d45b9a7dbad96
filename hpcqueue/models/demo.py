"""The offline demo model: a byte-level BPE tokenizer and a tiny random Llama, built on first use.

Deterministic and offline, so hpcqueue runs real tokenisation, real batched generation and real metering on
any machine. Building it is the only thing in ``models`` that imports torch and transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

DEMO_MODEL = "hpcqueue-demo"
#: Bump when the demo recipe changes: a new directory name means old caches are never reused by mistake.
DEMO_MODEL_VERSION = "v1"
DEMO_VOCAB_SIZE = 2048
DEMO_SEED = 20240101

DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def default_cache_dir() -> Path:
    """Where the demo model is built when no ``cache_dir`` is given (the user's cache dir for hpcqueue)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("hpcqueue"))


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return the demo model's directory, building it first if needed.

    Concurrent callers (several workers on one node, or on a shared file system) serialise on a file lock;
    the model is built in a temporary directory and renamed into place, so nobody sees half a model.
    """
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    models = root / "models"
    dest = models / f"{DEMO_MODEL}-{DEMO_MODEL_VERSION}"
    if (dest / "config.json").is_file():
        return dest
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f".{dest.name}.lock")):
        if (dest / "config.json").is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=models))
        try:
            build_demo_model(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by a group
            if dest.exists():  # an incomplete directory left by a crash before the rename: replace it
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "queue node cluster job task prompt model token energy power battery river forest city garden window "
    "table teacher student engine farmer doctor machine storm mountain village market letter answer question "
    "signal partition server student network library kitchen bridge harbour planet ocean morning evening "
    "journey history picture language number minute system memory record report"
)
_VERBS = _words(
    "runs builds reads writes measures counts finds sends holds keeps moves starts stops opens closes "
    "carries watches answers explains follows remembers shares changes checks prints saves loads waits"
)
_ADJECTIVES = _words(
    "small large quiet busy bright dark early late green cold warm fast slow simple careful honest ancient "
    "modern shared local remote empty full heavy light clear"
)
_ADVERBS = _words("quickly slowly carefully quietly often rarely always never again together")
_PREPOSITIONS = _words("in on under over near behind before after during across through with")
_DETERMINERS = _words("the a every this that one some our their")
_CONNECTIVES = _words("and but because so while although when")
_QUESTION_WORDS = _words("what why how where when who")


def _demo_sentence(rng: random.Random) -> str:
    def noun_phrase() -> str:
        words = [rng.choice(_DETERMINERS)]
        if rng.random() < 0.5:
            words.append(rng.choice(_ADJECTIVES))
        words.append(rng.choice(_NOUNS))
        return " ".join(words)

    def clause() -> str:
        parts = [noun_phrase(), rng.choice(_VERBS), noun_phrase()]
        if rng.random() < 0.4:
            parts.append(rng.choice(_ADVERBS))
        if rng.random() < 0.4:
            parts += [rng.choice(_PREPOSITIONS), noun_phrase()]
        return " ".join(parts)

    roll = rng.random()
    if roll < 0.15:
        text = (
            f"{rng.choice(_QUESTION_WORDS)} does {noun_phrase()} {rng.choice(_VERBS)[:-1]} {noun_phrase()}?"
        )
    elif roll < 0.4:
        text = f"{clause()} {rng.choice(_CONNECTIVES)} {clause()}."
    elif roll < 0.5:
        text = f"{clause()}, {rng.randint(2, 9999)} times."
    else:
        text = f"{clause()}."
    return text[0].upper() + text[1:]


def demo_corpus(n_sentences: int = 20_000, seed: int = DEMO_SEED) -> list[str]:
    """The generated English-like text the demo tokenizer is trained on (deterministic for a seed)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        lines.append(" ".join(_demo_sentence(rng) for _ in range(rng.randint(1, 4))))
    return lines


def build_demo_model(dest: Path) -> None:
    """Build the demo model into ``dest``: a byte-level BPE tokenizer and a tiny random Llama.

    Deterministic and offline: the same code gives byte-identical ``tokenizer.json`` and identical weights
    on every run. Its weights are random, so its output is gibberish by design; it exists so hpcqueue runs
    real tokenisation, real batched generation and real metering anywhere.
    """
    import torch
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" is noise in a CLI's first run

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    backend = RustTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_VOCAB_SIZE,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(demo_corpus(), trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = DEMO_CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 writes its internal "TokenizersBackend"; the public class name loads in 4.x and 5.x.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so the random logits are peaked: greedy decoding then picks the same
        # token whatever the padding of the batch, and the text varies with the prompt.
        initializer_range=0.2,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(DEMO_SEED)
        with torch.no_grad():
            model = LlamaForCausalLM(model_config)
            for name, param in sorted(model.named_parameters()):
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, model_config.initializer_range, generator=_seeded(name))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(dest)
    finally:
        torch.random.set_rng_state(generator_state)


def _seeded(name: str) -> Any:
    """A torch generator seeded from a parameter's name: weights do not depend on initialisation order."""
    import torch

    seed = int.from_bytes(hashlib.sha256(f"{DEMO_SEED}:{name}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(seed)
