"""A model's architecture, and the arithmetic and memory traffic of each phase of inference.

:class:`Architecture` holds what the analytic estimate needs of a decoder-only transformer — layers, hidden
size, attention heads and key/value heads, head size, MLP width and whether it is gated, vocabulary, tied
embeddings, parameter dtype — read from a Hugging Face ``config.json`` (Llama, Mistral, Qwen, Falcon and GPT-2
spellings; :func:`read_config`) or taken from :data:`KNOWN` by name. Its methods count, per sequence:

* **prefill** of ``n`` prompt tokens: the matrix products of every layer for every token, the causal
  attention scores (n(n+1)/2 query-key pairs per layer), the logits of the last token, and the bytes moved —
  the weights once, the key/value cache written;
* a **decode step** at context ``c`` *with* a KV cache: one token through every layer, attention over the
  ``c`` cached positions, its logits; bytes: the weights once per step (shared by the sequences of a batch)
  and each sequence's cache read;
* a decode step *without* one (how the published profiles were measured: every step runs the whole
  sequence again): the prefill of ``c + 1`` tokens.

FLOPs count a multiply-add as two. Normalisation, activation and rotary-embedding work is left out (well under
1 % of the matrix products at these sizes). Mixture-of-experts models are not described here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcqueue.errors import ModelError

#: Bytes per parameter of each dtype a config may name.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's shape (see the module's docstring)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool = True
    tied_embeddings: bool = False
    dtype: str = "float16"

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_width(self) -> int:
        """Key (or value) features per token per layer: ``kv_heads × head_dim``."""
        return self.kv_heads * self.head_dim

    def layer_parameters(self) -> int:
        """Weights of one layer: the q, k, v and output projections, the MLP and two norms."""
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_width * 2
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return attention + mlp + 2 * self.hidden

    def parameters(self) -> int:
        """Every weight: the layers, the embedding (and the output head unless tied) and the final norm."""
        embedding = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_parameters() + embedding + self.hidden

    def weight_bytes(self) -> int:
        return self.parameters() * self.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        """The key/value cache one token adds, over every layer."""
        return 2 * self.layers * self.kv_width * self.dtype_bytes

    def _matmul_flops_per_token(self) -> int:
        return 2 * self.layers * (self.layer_parameters() - 2 * self.hidden)

    def _logit_flops(self) -> int:
        return 2 * self.hidden * self.vocab

    def _attention_flops(self, pairs: float) -> float:
        """Scores and weighted values for ``pairs`` query-key pairs, over every layer and head."""
        return 4.0 * self.layers * self.heads * self.head_dim * pairs

    def prefill(self, tokens: int) -> Work:
        """Prefill of a ``tokens``-long prompt (one sequence)."""
        flops = (
            tokens * self._matmul_flops_per_token()
            + self._attention_flops(tokens * (tokens + 1) / 2)
            + self._logit_flops()
        )
        return Work(flops, float(self.weight_bytes() + tokens * self.kv_bytes_per_token()))

    def decode_step(self, context: int, *, kv_cache: bool = True) -> Work:
        """One decode step of one sequence whose context holds ``context`` tokens. ``bytes`` counts the
        weights in full: at batch size B they are read once for all B sequences (see :meth:`Work.batched`)."""
        if not kv_cache:
            return self.prefill(context + 1)
        flops = self._matmul_flops_per_token() + self._attention_flops(context + 1) + self._logit_flops()
        cache = (context + 1) * self.kv_bytes_per_token()
        return Work(float(flops), float(self.weight_bytes() + cache), shared_bytes=float(self.weight_bytes()))


@dataclass(frozen=True)
class Work:
    """Floating-point operations and bytes moved from memory by one phase of one sequence; ``shared_bytes``
    is the part of ``bytes`` the sequences of a batch read once between them (the weights)."""

    flops: float
    bytes: float
    shared_bytes: float = 0.0

    def batched(self, batch_size: int) -> Work:
        """The same phase for ``batch_size`` sequences run together: the weights read once."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        own = self.bytes - self.shared_bytes
        return Work(self.flops * batch_size, own * batch_size + self.shared_bytes, self.shared_bytes)


# The spellings of config.json fields across model families, first found wins.
_FIELDS: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_hidden_size"),
    "vocab": ("vocab_size",),
}
_REQUIRED = ("layers", "hidden", "heads", "vocab")
#: Model types whose MLP is two matrices (up, down) rather than gated (gate, up, down).
_PLAIN_MLP = ("gpt2", "gpt_neox", "falcon", "gptj", "opt", "bloom", "phi")


def architecture_of(model: str, *, cache_dir: Path | None = None) -> Architecture:
    """The architecture of ``model``: a name in :data:`KNOWN`, else what
    :func:`hpcqueue.models.resolve_model` finds without network access (the demo model, a directory holding
    ``config.json`` — nothing else of the model is needed —, or a Hugging Face id in the local cache), read
    from its ``config.json``.

    Raises :class:`ModelError` saying what was tried and which names are known.
    """
    if model in KNOWN:
        return KNOWN[model]
    from hpcqueue.models import resolve_model

    try:
        ref = resolve_model(model, cache_dir=cache_dir)
    except ModelError as exc:
        raise ModelError(f"{exc}. Architectures known by name: {', '.join(KNOWN)}") from exc
    return replace(read_config(ref.path), name=model)


def read_config(path: str | Path) -> Architecture:
    """The architecture a model directory's ``config.json`` (or that file itself) describes.

    Raises :class:`ModelError` naming the file and the missing fields (with the spellings accepted), or
    saying that the file is missing or not JSON.
    """
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{file} does not exist: a model directory for an estimate needs its config.json "
            "(the architecture: layers, hidden size, heads, vocabulary)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {file}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{file} is not a JSON object")
    return from_config(config, name=path.name if path.is_dir() else path.parent.name, source=str(file))


def from_config(config: Mapping[str, Any], *, name: str, source: str = "config") -> Architecture:
    """The architecture a ``config.json``'s fields describe (see :func:`read_config`)."""
    values: dict[str, int] = {}
    for key, spellings in _FIELDS.items():
        for spelling in spellings:
            value = config.get(spelling)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ModelError(f"{source}: {spelling} must be a positive integer, got {value!r}")
                values[key] = value
                break
    missing = [key for key in _REQUIRED if key not in values]
    if missing:
        wanted = "; ".join(f"{key}: {' or '.join(_FIELDS[key])}" for key in missing)
        raise ModelError(f"{source} lacks the field(s) an estimate needs — {wanted}")
    heads = values["heads"]
    model_type = str(config.get("model_type", ""))
    kv_heads = values.get("kv_heads")
    if kv_heads is None:
        kv_heads = 1 if config.get("multi_query") else heads
    head_dim = config.get("head_dim") or values["hidden"] // heads
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
    if dtype not in DTYPE_BYTES:
        raise ModelError(f"{source}: dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return Architecture(
        name=name,
        layers=values["layers"],
        hidden=values["hidden"],
        heads=heads,
        kv_heads=kv_heads,
        head_dim=int(head_dim),
        intermediate=values.get("intermediate") or 4 * values["hidden"],
        vocab=values["vocab"],
        gated_mlp=model_type not in _PLAIN_MLP,
        tied_embeddings=bool(config.get("tie_word_embeddings", model_type == "gpt2")),
        dtype=dtype,
    )


def _known(name: str, *shape: int, **options: Any) -> tuple[str, Architecture]:
    layers, hidden, heads, kv_heads, intermediate, vocab = shape
    return name, Architecture(
        name, layers, hidden, heads, kv_heads, hidden // heads, intermediate, vocab, **options
    )


#: Common architectures by name, from their published config.json files (so that a token trace can be
#: estimated without the model's files).
KNOWN: dict[str, Architecture] = dict(
    [
        _known("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
        _known("llama-2-13b", 40, 5120, 40, 40, 13824, 32000),
        _known("llama-2-70b", 80, 8192, 64, 8, 28672, 32000),
        _known("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, dtype="bfloat16"),
        _known("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, dtype="bfloat16"),
        _known("mistral-7b", 32, 4096, 32, 8, 14336, 32000, dtype="bfloat16"),
        _known("falcon-7b", 32, 4544, 71, 1, 18176, 65024, gated_mlp=False, dtype="bfloat16"),
        _known("gpt2", 12, 768, 12, 12, 3072, 50257, gated_mlp=False, tied_embeddings=True, dtype="float32"),
    ]
)
