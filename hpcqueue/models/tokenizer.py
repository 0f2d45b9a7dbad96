"""The light tokenizer: the model's own tokenizer without transformers, for the driver.

It counts tokens and renders chats with only ``tokenizers`` and ``jinja2``: importing torch and transformers
costs seconds and is not needed to plan a batch. It reads the same ``tokenizer.json`` and chat template the
worker's transformers tokenizer reads, so the driver's counts equal the worker's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcqueue.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import tokenizers

#: The chat format used when a model has no chat template. Each message is written as ``<|role|>`` on its
#: own line followed by its content and a newline; a final ``<|assistant|>`` line asks for the answer.
#: The demo model's chat template renders the same format after its beginning-of-sequence token.
PLAIN_CHAT_FORMAT = "<|role|>\\ncontent\\n per message, then <|assistant|>\\n"

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


def _token_text(value: Any) -> str | None:
    """A special token as saved in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def read_model_json(path: Path) -> dict[str, Any]:
    """A JSON object of a model's directory (config.json, tokenizer_config.json...): {} when the file is
    missing, a ModelError naming it when it cannot be read."""
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
        tok_config = read_model_json(root / "tokenizer_config.json")
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
        legacy = read_model_json(root / "chat_template.json").get("chat_template")
        return legacy if isinstance(legacy, str) else None

    @staticmethod
    def _find_context_length(root: Path, tok_config: dict[str, Any]) -> int | None:
        config = read_model_json(root / "config.json")
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
