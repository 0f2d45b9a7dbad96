"""Resolving a model name to files on disk, without network access.

Three kinds of model name are accepted, tried in this order:

* ``hpcqueue-demo`` (``DEMO_MODEL``): a tiny Llama-shaped model built offline on first use and cached
  (:mod:`hpcqueue.models.demo`), so a new user (and the test suite) can run real inference without network
  access;
* a local directory holding ``config.json`` (a model saved with ``save_pretrained`` or downloaded by hand);
* a Hugging Face id (``org/name``) already present in the local Hugging Face cache. Compute nodes usually
  have no network, so this module never downloads: the error says how to fetch the model on a login node.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from hpcqueue.errors import ModelError
from hpcqueue.models.demo import DEMO_MODEL, ensure_demo_model


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a directory on disk.

    ``fingerprint`` is a short sha256 of ``config.json`` and ``tokenizer.json``: two task specs naming the
    same fingerprint used the same architecture and the same tokenizer (hence the same token counts).
    """

    name: str
    path: Path
    fingerprint: str


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
        # The name is quoted: the user may paste this command into a shell.
        f"On a machine with network access (a login node) run `hf download {shlex.quote(repo_id)}` with "
        "HF_HOME set to a "
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
