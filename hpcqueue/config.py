"""Settings and the cluster config: TOML → validated models, precedence resolved in one place.

Precedence, lowest first: built-in defaults < config file < ``HPCQUEUE_*`` environment < command-line flags.
Everything is resolved by :func:`resolve`, called by each command, never at import time.

A config file looks like::

    model = "hpcqueue-demo"
    max_new_tokens = 64

    [targets.gpu]
    executor = "slurm"
    partition = "gpu"
    hardware = "a100-40g"
    gres = "gpu:1"

With no config file the embedded default is a single ``local`` target on this machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpcqueue.durations import parse_duration
from hpcqueue.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_NAME = "hpcqueue"
ENV_PREFIX = "HPCQUEUE_"
DEFAULT_TARGET_NAME = "local"


class Target(BaseModel):
    """A place where work runs: a Slurm partition or the local node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    executor: Literal["local", "slurm"] = "local"
    hardware: str = "cpu-generic"
    profile: str | None = Field(
        default=None, description="profile name; default: matched by model and hardware"
    )
    partition: str | None = None
    nodes: int = Field(default=1, ge=1)
    gres: str | None = None
    gpus_per_node: int = Field(default=0, ge=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem_gb: float | None = Field(default=None, gt=0)
    time_limit_min: int = Field(default=60, ge=1)
    array_parallelism: int = Field(default=1, ge=1)
    site: str = "default"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    extra_sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description='more sbatch options, e.g. {reservation = "maint", hold = true}'
    )
    task_size: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    meter: str = "auto"
    nominal_power_w: float | None = Field(default=None, gt=0)
    device: str = "auto"
    dtype: str = "auto"

    @model_validator(mode="after")
    def _slurm_needs_partition(self) -> Target:
        if self.executor == "slurm" and not self.partition:
            raise ValueError("a target with executor 'slurm' needs a 'partition'")
        return self


def _default_targets() -> dict[str, Target]:
    return {DEFAULT_TARGET_NAME: Target(name=DEFAULT_TARGET_NAME)}


class Settings(BaseModel):
    """Everything a command needs to know, after precedence has been applied."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: str = "hpcqueue-demo"
    policy: str = "threshold"
    lambda_: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        alias="lambda",
        description="weight of energy in the cost C = λ·E + (1 − λ)·R (1: energy only, 0: runtime only)",
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        alias="deadline",
        description='time by which the batch should be done: seconds, or "90m", "8h", "1d", "1h30m"',
    )
    max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_limit: int = Field(default=32768, ge=1)
    max_line_bytes: int = Field(default=1_048_576, ge=64)
    task_size: int = Field(default=256, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_batch_tokens: int = Field(default=8192, ge=1)
    db_url: str | None = None
    batch_root: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)) / "batches")
    cache_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)))
    profile_dirs: list[Path] = Field(default_factory=list)
    targets: dict[str, Target] = Field(default_factory=_default_targets)
    config_path: Path | None = None

    @field_validator("deadline_s", mode="before")
    @classmethod
    def _parse_deadline(cls, value: Any) -> Any:
        return parse_duration(value, bare_unit="s") if isinstance(value, str) else value

    @field_validator("targets", mode="before")
    @classmethod
    def _name_targets(cls, value: Any) -> Any:
        """``[targets.gpu]`` tables get ``name = "gpu"``; a name inside the table must agree."""
        if not isinstance(value, Mapping):
            return value
        named: dict[str, Any] = {}
        for key, target in value.items():
            if isinstance(target, Mapping):
                if "name" in target and target["name"] != key:
                    raise ValueError(
                        f"target '{key}' has name = {target['name']!r}; drop 'name' or make them equal"
                    )
                target = {**target, "name": key}
            named[key] = target
        return named

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.targets:
            raise ValueError("no targets: declare at least one [targets.NAME] table")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) exceeds "
                f"max_new_tokens_limit ({self.max_new_tokens_limit})"
            )
        return self

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"unknown target {name!r}; targets in this config: {', '.join(self.targets)}"
            ) from None


# Settings that may come from HPCQUEUE_<NAME> environment variables (scalars and paths only); the names are
# those of the config file (``lambda``, ``deadline``).
_ENV_FIELDS = (
    "model",
    "policy",
    "lambda",
    "deadline",
    "max_new_tokens",
    "max_new_tokens_limit",
    "max_line_bytes",
    "task_size",
    "batch_size",
    "max_batch_tokens",
    "db_url",
    "batch_root",
    "cache_dir",
)
_PATH_FIELDS = ("batch_root", "cache_dir")


def default_config_path() -> Path:
    """Where a user's own config lives when neither ``--config`` nor ``HPCQUEUE_CONFIG`` names one."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config; relative paths inside it are relative to the file's directory."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    base = path.parent
    for key in _PATH_FIELDS:
        if isinstance(data.get(key), str):
            data[key] = str((base / os.path.expanduser(data[key])).resolve())
    if isinstance(data.get("profile_dirs"), list):
        data["profile_dirs"] = [
            str((base / os.path.expanduser(p)).resolve()) if isinstance(p, str) else p
            for p in data["profile_dirs"]
        ]
    return data


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _ENV_FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    return values


def resolve(
    config_path: str | os.PathLike[str] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < config file < ``HPCQUEUE_*`` environment < ``flags``.

    ``flags`` holds command-line values; ``None`` values mean "not given" and are ignored.
    The config file is ``config_path``, else ``$HPCQUEUE_CONFIG``, else the user's config file if it exists.
    """
    environ = os.environ if environ is None else environ
    path: Path | None = None
    if config_path is not None:
        path = Path(config_path)
    elif environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    elif default_config_path().is_file():
        path = default_config_path()

    merged: dict[str, Any] = {}
    origin = "built-in defaults"
    if path is not None:
        merged.update(load_config_file(path))
        merged["config_path"] = str(path.resolve())
        origin = str(path)
    env = _env_values(environ)
    merged.update(env)
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, origin, env, flags or {})) from None


def _describe_validation_error(
    exc: ValidationError, origin: str, env: Mapping[str, Any], flags: Mapping[str, Any]
) -> str:
    """Turn pydantic's errors into lines naming where the value came from, the key and what is valid."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc) or "(top level)"
        top = loc[0] if loc else ""
        if top in flags and flags.get(top) is not None:
            source = f"option --{top.replace('_', '-')}"
        elif top in env:
            source = f"environment {ENV_PREFIX}{top.upper()}"
        else:
            source = origin
        if error["type"] == "extra_forbidden":
            model = Target if len(loc) >= 3 and loc[0] == "targets" else Settings
            valid = ", ".join(
                sorted(
                    info.alias or name
                    for name, info in model.model_fields.items()
                    if name not in ("name", "config_path")
                )
            )
            lines.append(f"{source}: {key}: unknown key; valid keys: {valid}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            got = repr(error.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            lines.append(f"{source}: {key}: {message} (got {got})")
    return "invalid settings:\n  " + "\n  ".join(lines)
