"""Models: resolving a model to files on disk, the offline demo model, and the light tokenizer the driver
counts tokens with. Only :func:`hpcqueue.models.demo.build_demo_model` imports torch."""

from __future__ import annotations

from hpcqueue.models.demo import DEMO_MODEL, build_demo_model, default_cache_dir, ensure_demo_model
from hpcqueue.models.resolve import ModelRef, model_fingerprint, resolve_model
from hpcqueue.models.tokenizer import PLAIN_CHAT_FORMAT, Tokenizer

__all__ = [
    "DEMO_MODEL",
    "PLAIN_CHAT_FORMAT",
    "ModelRef",
    "Tokenizer",
    "build_demo_model",
    "default_cache_dir",
    "ensure_demo_model",
    "model_fingerprint",
    "resolve_model",
]
