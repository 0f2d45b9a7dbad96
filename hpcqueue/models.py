"""Models: resolving a model name to files on disk, the offline demo model, and the light tokenizer.

Three kinds of model name are accepted, tried in this order:

* ``hpcqueue-demo`` (``DEMO_MODEL``): a tiny Llama-shaped model built offline on first use and cached, so a
  new user (and the test suite) can run real inference without network access;
* a local directory holding ``config.json`` (a model saved with ``save_pretrained`` or downloaded by hand);
* a Hugging Face id (``org/name``) already present in the local Hugging Face cache. Compute nodes usually
  have no network, so this module never downloads: the error says how to fetch the model on a login node.

The driver counts tokens with ``Tokenizer``, which needs only ``tokenizers`` and ``jinja2``: importing torch
and transformers costs seconds and is not needed to plan a batch. Only ``build_demo_model`` imports them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcqueue.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import tokenizers

    from hpcqueue.requests import Request

DEMO_MODEL = "hpcqueue-demo"
#: Bump when the demo recipe changes: a new directory name means old caches are never reused by mistake.
DEMO_MODEL_VERSION = "v1"
DEMO_VOCAB_SIZE = 2048
DEMO_SEED = 20240101

#: The chat format used when a model has no chat template. Each message is written as ``<|role|>`` on its
#: own line followed by its content and a newline; a final ``<|assistant|>`` line asks for the answer.
#: The demo model's chat template renders the same format after its beginning-of-sequence token.
PLAIN_CHAT_FORMAT = "<|role|>\\ncontent\\n per message, then <|assistant|>\\n"

DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
# Counting a million prompts one encode call at a time is slow, and very large batches are slower per text
# than moderate ones (allocation); chunks of this size let tokenizers use every core at its best rate.
_ENCODE_CHUNK = 2048


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a directory on disk.

    ``fingerprint`` is a short sha256 of ``config.json`` and ``tokenizer.json``: two task specs naming the
    same fingerprint used the same architecture and the same tokenizer (hence the same token counts).
    """

    name: str
    path: Path
    fingerprint: str


def default_cache_dir() -> Path:
    """Where the demo model is built when no ``cache_dir`` is given (the user's cache dir for hpcqueue)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("hpcqueue"))


def model_fingerprint(path: Path) -> str:
    """Short sha256 over ``config.json`` and ``tokenizer.json`` (a missing file counts as empty)."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        digest.update(name.encode())
        file = path / name
        digest.update(file.read_bytes() if file.is_file() else b"")
    return digest.hexdigest()[:16]


def resolve_model(name: str, *, cache_dir: Path | None = None) -> ModelRef:
    """Turn a model name into a local directory, without network access.

    ``hpcqueue-demo`` is built under ``<cache_dir>/models/`` the first time (safe when several workers
    start at once); a directory holding ``config.json`` is used as it is; anything else is looked up as a
    Hugging Face id in the local Hugging Face cache. Raises ``ModelError`` saying how to make it available.
    """
    if name == DEMO_MODEL:
        path = ensure_demo_model(cache_dir)
        return ModelRef(name=name, path=path, fingerprint=model_fingerprint(path))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(
                f"model directory {local} has no config.json: point the model setting at a directory "
                "written by save_pretrained (config.json, tokenizer.json, weights), or use a Hugging Face id"
            )
        return ModelRef(name=name, path=local.resolve(), fingerprint=model_fingerprint(local))
    path = _hf_cached_snapshot(name)
    return ModelRef(name=name, path=path, fingerprint=model_fingerprint(path))


def _hf_cached_snapshot(repo_id: str) -> Path:
    how_to_fetch = (
        f"On a machine with network access (a login node) run `hf download {repo_id}` with HF_HOME set to a "
        "directory on the shared file system, and set the same HF_HOME for hpcqueue; or pass the path of a "
        "local model directory (one holding config.json) as the model."
    )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModelError(
            f"model {repo_id!r} is not a local directory and huggingface_hub is missing"
        ) from exc
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True)
    except HFValidationError as exc:
        raise ModelError(
            f"model {repo_id!r} is neither {DEMO_MODEL!r}, nor an existing directory, nor a valid Hugging "
            f"Face id (org/name): {exc}"
        ) from exc
    except Exception as exc:  # LocalEntryNotFoundError and friends: not in the cache
        raise ModelError(f"model {repo_id!r} is not in the local Hugging Face cache. {how_to_fetch}") from exc
    path = Path(snapshot)
    if not (path / "config.json").is_file():
        raise ModelError(f"the cached snapshot of {repo_id!r} at {path} has no config.json. {how_to_fetch}")
    return path


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


# ----------------------------------------------------------------------------------------------------
# The demo model
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# The light tokenizer
# ----------------------------------------------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as saved in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot be read as JSON ({exc}); re-download or rebuild the model") from exc
    return data if isinstance(data, dict) else {}


class Tokenizer:
    """The model's tokenizer without transformers: counts tokens and renders chats on the driver.

    It reads the same ``tokenizer.json`` the worker's transformers tokenizer reads (whose post-processor
    decides which special tokens are added, as in transformers 5) and renders the chat template in the same
    sandboxed Jinja environment, so the driver's counts equal the worker's. Load it with
    ``Tokenizer.load(path)``.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: dict[str, str],
        chat_template: str | None,
        context_length: int | None,
    ) -> None:
        self._backend = backend
        self.special_tokens = dict(special_tokens)
        self.chat_template = chat_template
        self._context_length = context_length
        self._compiled: Any = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a model directory (``tokenizer.json`` required; config files optional)."""
        from tokenizers import Tokenizer as RustTokenizer

        root = Path(path)
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelError(
                f"{root} has no tokenizer.json: hpcqueue counts tokens with the fast (tokenizers) format; "
                "re-save the model's tokenizer with a recent transformers (AutoTokenizer.from_pretrained(...)"
                ".save_pretrained(dir)) to create it"
            )
        try:
            backend = RustTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:
            raise ModelError(f"{tokenizer_file}: cannot be loaded by tokenizers ({exc})") from exc
        backend.no_truncation()
        backend.no_padding()
        tok_config = _read_json(root / "tokenizer_config.json")
        special = {key: text for key in _SPECIAL_TOKEN_KEYS if (text := _token_text(tok_config.get(key)))}
        if tok_config.get("split_special_tokens"):
            backend.encode_special_tokens = True
        template = cls._find_template(root, tok_config)
        return cls(
            backend,
            special_tokens=special,
            chat_template=template,
            context_length=cls._find_context_length(root, tok_config),
        )

    @staticmethod
    def _find_template(root: Path, tok_config: dict[str, Any]) -> str | None:
        jinja_file = root / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        template = tok_config.get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: transformers uses "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            default = named.get("default")
            return default if isinstance(default, str) else None
        legacy = _read_json(root / "chat_template.json").get("chat_template")
        return legacy if isinstance(legacy, str) else None

    @staticmethod
    def _find_context_length(root: Path, tok_config: dict[str, Any]) -> int | None:
        config = _read_json(root / "config.json")
        sections = [config, config.get("text_config") or {}]
        for section in sections:
            for key in _CONTEXT_KEYS:
                value = section.get(key) if isinstance(section, dict) else None
                if isinstance(value, int) and value > 0:
                    return value
        value = tok_config.get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < 1e9:  # transformers' "no limit" is ~1e30
            return int(value)
        return None

    @property
    def context_length(self) -> int | None:
        """Most tokens (input + output) the model takes, or None when the model does not say."""
        return self._context_length

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for decoding and vocabulary look-ups)."""
        return self._backend

    def _template(self) -> Any:
        if self._compiled is None:
            self._compiled = _compile_chat_template(self.chat_template or "")
        return self._compiled

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Render a conversation as the model sees it, ending with the cue for the assistant's answer.

        With a chat template this equals transformers' ``apply_chat_template(messages, tokenize=False,
        add_generation_prompt=True)``. Without one, the plain format ``PLAIN_CHAT_FORMAT`` is used.
        """
        if self.chat_template is None:
            body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
            return body + "<|assistant|>\n"
        from jinja2.exceptions import TemplateError

        chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        try:
            return str(
                self._template().render(messages=chat, add_generation_prompt=True, **self.special_tokens)
            )
        except TemplateError as exc:
            raise ModelError(f"the model's chat template refused this conversation: {exc}") from exc

    def request_text(self, request: Request) -> tuple[str, bool]:
        """The text fed to the model for a request and whether the tokenizer adds its special tokens.

        A rendered chat template already holds its special tokens (e.g. the beginning-of-sequence token), so
        they are not added a second time; a prompt or a plain-format chat gets them from the tokenizer.
        """
        if request.kind == "chat":
            return self.render_chat(request.messages or ()), self.chat_template is None
        return request.prompt or "", True

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text."""
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def count(self, texts: Iterable[str], *, add_special_tokens: bool = True) -> np.ndarray:
        """Token counts of many texts (int64); each distinct text is encoded once, in parallel chunks."""
        import numpy as np
        import pandas as pd

        codes, uniques = pd.factorize(pd.Series(list(texts), dtype=object), use_na_sentinel=False)
        unique_texts = [str(u) for u in uniques]
        unique_counts = np.zeros(len(unique_texts), dtype=np.int64)
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        for start in range(0, len(unique_texts), _ENCODE_CHUNK):
            chunk = unique_texts[start : start + _ENCODE_CHUNK]
            encodings = encode(chunk, add_special_tokens=add_special_tokens)
            unique_counts[start : start + len(chunk)] = [len(e) for e in encodings]
        return unique_counts[codes] if len(codes) else np.zeros(0, dtype=np.int64)

    def count_requests(self, table: pd.DataFrame) -> np.ndarray:
        """Input token counts (int64, one per row) of a request table (see docs/internals.md).

        Chat rows are rendered first and their ``text`` column is filled with the rendered conversation, so
        the planner and the results show what the model was given.
        """
        import numpy as np

        n = len(table)
        counts = np.zeros(n, dtype=np.int64)
        if n == 0:
            return counts
        is_chat = (table["kind"] == "chat").to_numpy()
        if is_chat.any():
            rendered = [self.render_chat(m) for m in table.loc[is_chat, "messages"]]
            table.loc[is_chat, "text"] = rendered
            counts[is_chat] = self.count(rendered, add_special_tokens=self.chat_template is None)
        prompts = ~is_chat
        if prompts.any():
            texts = table.loc[prompts, "text"].fillna("").astype(str).tolist()
            counts[prompts] = self.count(texts, add_special_tokens=True)
        return counts


def _compile_chat_template(template: str) -> Any:
    """Compile a chat template in the environment transformers uses (sandboxed, trimmed, same globals)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class _GenerationTag(jinja2.ext.Extension):
        """``{% generation %}`` blocks mark assistant text for training; rendering just outputs them."""

        tags = {"generation"}  # noqa: RUF012 - the jinja2 extension API

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return str(caller())

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ModelError(
            f"the model's chat template is not valid Jinja (line {exc.lineno}): {exc.message}"
        ) from exc
