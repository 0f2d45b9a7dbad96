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
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from hpcqueue.durations import parse_duration
from hpcqueue.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_NAME = "hpcqueue"
ENV_PREFIX = "HPCQUEUE_"
DEFAULT_TARGET_NAME = "local"


#: A target or site name: it becomes a folder of the batch's logs, part of Slurm job and profile names.
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._+-]{0,62}[A-Za-z0-9._+-])?")
NAME_RULE = "1 to 64 letters, digits, spaces, '.', '_', '+' or '-', starting with a letter or a digit"
#: An ``extra_sbatch`` key: a long option of sbatch without its ``--`` (``reservation``, ``mail-type``).
SBATCH_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
#: The inference engines a worker can run a model with.
EngineName = Literal["transformers", "vllm"]
ENGINES: tuple[str, ...] = ("transformers", "vllm")
DEFAULT_ENGINE = "transformers"
#: Fields of a target that become ``#SBATCH`` lines.
SBATCH_FIELDS = ("partition", "gres", "account", "qos", "constraint")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid target or site name (:data:`NAME_RE`), else a ValueError saying what is."""
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} name {value!r} is not allowed: use {NAME_RULE}")
    return value


def check_sbatch_value(value: Any, key: str) -> Any:
    """``value`` if it can be an ``#SBATCH`` option's value, else a ValueError: sbatch options are written
    one per line of a shell script, so a control character (a newline above all) would end the line and
    let the rest run as a command; and sbatch drops a backslash from the value. Quotes, ``$``, backticks,
    spaces and the like are fine: submitit quotes them and sbatch reads them back intact."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{key} is empty")
        bad = sorted({ch for ch in value if ord(ch) < 32 or ord(ch) == 127})
        if bad:
            raise ValueError(
                f"{key} holds control character(s) {', '.join(repr(ch) for ch in bad)} (a newline, a tab, "
                "NUL ...); an sbatch option is one line of the job script: remove them"
            )
        if "\\" in value:  # sbatch reads #SBATCH lines with backslash escapes, even inside quotes
            raise ValueError(f"{key} holds a backslash, which sbatch would drop from the value: remove it")
    return value


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
    power_w: float | None = Field(
        default=None, gt=0, description="a node's draw while busy (W): what the site's power must cover"
    )
    device: str = "auto"
    dtype: str = "auto"
    engine: EngineName | None = Field(
        default=None, description='"transformers" or "vllm"; default: the top-level engine (transformers)'
    )
    python: str | None = Field(
        default=None,
        description="the Python the workers run with (a venv's bin/python: vLLM may need a venv of its own)",
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="vLLM: share of each GPU's memory it may take"
    )
    max_model_len: int | None = Field(default=None, ge=1, description="vLLM: longest input + output, tokens")

    @field_validator("name", "site")
    @classmethod
    def _safe_name(cls, value: str, info: Any) -> str:
        return check_name(value, "a target's" if info.field_name == "name" else "a site's")

    @field_validator("profile")
    @classmethod
    def _safe_profile(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"profile name {value!r} is not allowed: use letters, digits, '.', '_' and '-'")
        return value

    @field_validator(*SBATCH_FIELDS)
    @classmethod
    def _sbatch_value(cls, value: str | None, info: Any) -> str | None:
        return check_sbatch_value(value, info.field_name)

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_options(cls, value: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, option in value.items():
            if not SBATCH_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"extra_sbatch key {key!r} is not an sbatch option name: use letters, digits, '-' and "
                    "'_', starting with a letter, without the leading '--' (e.g. reservation, mail-type)"
                )
            check_sbatch_value(option, f"extra_sbatch.{key}")
        return value

    @field_validator("python")
    @classmethod
    def _interpreter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_sbatch_value(value, "python")  # it becomes part of the job script's command line
        if not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"python must be an absolute path to an interpreter, not {value!r}")
        return os.path.expanduser(value)

    @model_validator(mode="after")
    def _slurm_needs_partition(self) -> Target:
        if self.executor == "slurm" and not self.partition:
            raise ValueError("a target with executor 'slurm' needs a 'partition'")
        return self


#: Keywords a site's file-or-keyword keys accept; any other string is a file path.
COOLING_MODELS = ("economizer", "economiser", "chiller")
WUE_MODELS = ("wet-bulb",)
POWER_MODELS = ("wind",)
#: Keys of a ``[sites.NAME]`` table that name files (resolved against the config file's folder).
SITE_PATH_KEYS = ("carbon", "weather", "cooling", "price", "power")
#: Uptime Institute, Global Data Center Survey 2023: the average annual PUE reported, 1.58. Used, and
#: labelled as assumed, for a site that states no cooling model.
DEFAULT_PUE = 1.58


class WindTurbines(BaseModel):
    """The turbines that power a site with ``power = "wind"`` (``[sites.NAME.wind]``): how many, each one's
    rated power, its hub height, the wind shear exponent and its power curve's speeds (m/s at the hub)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turbines: PositiveInt = 1
    rated_kw: PositiveFloat = Field(default=2000.0, description="one turbine's rated power (kW)")
    hub_height_m: PositiveFloat = 80.0
    shear_alpha: NonNegativeFloat = Field(default=0.14, description="power-law exponent, open land")
    cut_in_ms: NonNegativeFloat = Field(default=3.0, description="below it the turbine gives nothing")
    rated_ms: PositiveFloat = Field(default=12.0, description="from it on, the rated power")
    cut_out_ms: PositiveFloat = Field(default=25.0, description="above it the turbine stops")

    @model_validator(mode="after")
    def _speeds_in_order(self) -> WindTurbines:
        if not self.cut_in_ms < self.rated_ms < self.cut_out_ms:
            raise ValueError("wind speeds must satisfy cut_in_ms < rated_ms < cut_out_ms")
        return self


class SiteSpec(BaseModel):
    """Where targets physically are, as the config states it (``[sites.NAME]``); :mod:`hpcqueue.sites` loads
    the series and models it names.

    Numbers are constants (labelled as assumed wherever they are used); strings are files, or the model
    keywords of :data:`COOLING_MODELS`, :data:`WUE_MODELS` and :data:`POWER_MODELS`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    timezone: str = Field(default="UTC", description="interprets times a person types for this site")
    carbon: float | str | None = Field(
        default=None, description="gCO2eq/kWh: a constant, or an Electricity Maps or time,value CSV"
    )
    carbon_column: Literal["direct", "lifecycle"] = "direct"
    weather: str | None = Field(default=None, description="Open-Meteo JSON or CSV (temperature, humidity)")
    cooling: float | str = Field(
        default=DEFAULT_PUE, description='a constant PUE, "economizer", "chiller", or a CSV table T -> PUE'
    )
    free_cooling_below_c: float = 18.0
    mechanical_above_c: float = 27.0
    free_cooling_pue: float = Field(default=1.10, ge=1.0)
    supply_temperature_c: float = 18.0
    design_ambient_c: float = Field(default=35.0, description="where the chiller's COP fit applies as is")
    facility_overhead: float = Field(default=0.10, ge=0.0, description="non-cooling overhead, share of IT")
    wue: float | str | None = Field(default=None, description='on-site L per IT kWh, or "wet-bulb"')
    cycles_of_concentration: float = Field(default=5.0, gt=1.0)
    water_per_kwh: float | None = Field(default=None, ge=0.0, description="off-site L per kWh of electricity")
    price: str | float | None = Field(default=None, description="USD/MWh: a constant or a CSV")
    power: float | str | None = Field(default=None, description='kW available: a constant, a CSV, or "wind"')
    wind: WindTurbines = Field(default_factory=lambda: WindTurbines(), description='for power = "wind"')

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "a site's")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/London'"
            ) from None
        return value

    @model_validator(mode="after")
    def _models_have_their_inputs(self) -> SiteSpec:
        for key in ("carbon", "wue", "power", "water_per_kwh"):  # prices may be negative
            value = getattr(self, key)
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"{key} must not be negative, got {value}")
        if isinstance(self.cooling, (int, float)) and self.cooling < 1:
            raise ValueError(f"a constant PUE (cooling) is at least 1, got {self.cooling}")
        if isinstance(self.wue, str) and self.wue not in WUE_MODELS:
            raise ValueError(
                f"wue is a number (L per IT kWh) or one of {', '.join(WUE_MODELS)}, got {self.wue!r}"
            )
        needs_weather = [
            what
            for what, uses in (
                (f"cooling = {self.cooling!r}", isinstance(self.cooling, str)),
                ('wue = "wet-bulb"', self.wue == "wet-bulb"),
                ('power = "wind"', self.power == "wind"),
            )
            if uses
        ]
        if needs_weather and self.weather is None:
            raise ValueError(f'{" and ".join(needs_weather)} need(s) a weather file: set weather = "..."')
        if self.mechanical_above_c < self.free_cooling_below_c:
            raise ValueError(
                f"mechanical_above_c ({self.mechanical_above_c}) is below free_cooling_below_c "
                f"({self.free_cooling_below_c})"
            )
        if not self.supply_temperature_c < self.design_ambient_c:
            raise ValueError(
                f"the chiller's supply temperature ({self.supply_temperature_c:g} °C) must be below its "
                f"design ambient ({self.design_ambient_c:g} °C): lower supply_temperature_c"
            )
        return self


#: The objectives a plan can weigh, and what each one sums (see :mod:`hpcqueue.planner.timing`).
OBJECTIVES = ("energy", "carbon", "water", "cost", "runtime")


def parse_objective(value: str | Mapping[str, Any]) -> dict[str, float]:
    """``"carbon"`` or ``"carbon=1,water=0.1"`` (or a TOML table) as weights by objective."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            name, _, weight = part.strip().partition("=")
            items.append((name.strip(), weight.strip() or "1"))
    weights: dict[str, float] = {}
    for name, weight in items:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; objectives: {', '.join(OBJECTIVES)}")
        try:
            number = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"the weight of {name} must be a number, got {weight!r}") from None
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"the weight of {name} must be a finite number >= 0, got {weight!r}")
        weights[name] = weights.get(name, 0.0) + number
    if not any(weights.values()):
        raise ValueError("an objective needs at least one positive weight, e.g. carbon or carbon=1,water=0.1")
    return {name: w for name, w in weights.items() if w > 0}


def deadline_from(value: str, *, now: float) -> float:
    """A deadline as a person types it — an ISO 8601 time, or a duration after ``now`` ("8h", "90m") — in
    epoch seconds. Raises ConfigError naming what is wrong."""
    try:
        if _looks_like_time(value):
            return parse_time(value).timestamp()
        return now + parse_duration(value, bare_unit="s")
    except ValueError as exc:
        raise ConfigError(f"deadline {value!r}: {exc}") from None


def parse_time(value: str | datetime) -> datetime:
    """An ISO 8601 time with its offset (``2023-06-01T18:00-04:00``, ``...Z``); a time without one is read
    in this machine's local zone."""
    if isinstance(value, datetime):
        moment = value
    else:
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ValueError(
                f"not a time: {value!r}; use ISO 8601 with an offset, e.g. 2023-06-01T18:00-04:00"
            ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def _default_targets() -> dict[str, Target]:
    return {DEFAULT_TARGET_NAME: Target(name=DEFAULT_TARGET_NAME)}


class Settings(BaseModel):
    """Everything a command needs to know, after precedence has been applied."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: str = "hpcqueue-demo"
    engine: EngineName = Field(
        default="transformers",
        description='"transformers" or "vllm": the engine of targets that name none (--engine and '
        "HPCQUEUE_ENGINE apply to every target)",
    )
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
        description='time by which the batch should be done: seconds after the start, "90m", "8h", "1d", '
        '"1h30m", or an ISO 8601 time',
    )
    deadline_at: datetime | None = Field(default=None, exclude=True)
    start: datetime | None = Field(default=None, description='when the batch may start: ISO 8601, or "now"')
    slot_s: float = Field(default=3600.0, gt=0, alias="slot", description="planning slot: 1h, 30m, 15m, ...")
    objective: dict[str, float] | None = Field(
        default=None, description='"energy", "carbon", "water", "cost", "runtime", or "carbon=1,water=0.1"'
    )
    defer: bool = Field(default=True, description="false: every task starts at the start (run-now plans)")
    sites: dict[str, SiteSpec] = Field(default_factory=dict)
    max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_limit: int = Field(default=32768, ge=1)
    max_line_bytes: int = Field(default=1_048_576, ge=64)
    max_input_bytes: int = Field(default=2**31, ge=64, description="largest accepted input file, in bytes")
    task_size: int = Field(default=256, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_batch_tokens: int = Field(default=8192, ge=1)
    db_url: str | None = None
    batch_root: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)) / "batches")
    cache_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)))
    profile_dirs: list[Path] = Field(default_factory=list)
    targets: dict[str, Target] = Field(default_factory=_default_targets)
    config_path: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _absolute_deadline(cls, data: Any) -> Any:
        """A deadline written as a time (it has a date) is kept apart from a duration after the start."""
        if isinstance(data, Mapping):
            value = data.get("deadline", data.get("deadline_s"))
            if isinstance(value, datetime) or (isinstance(value, str) and _looks_like_time(value)):
                data = {k: v for k, v in data.items() if k not in ("deadline", "deadline_s")}
                data["deadline_at"] = parse_time(value)
        return data

    @field_validator("deadline_s", "slot_s", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        return parse_duration(value, bare_unit="s") if isinstance(value, str) else value

    @field_validator("start", mode="before")
    @classmethod
    def _parse_start(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "now"):
            return None
        return parse_time(value) if isinstance(value, (str, datetime)) else value

    @field_validator("objective", mode="before")
    @classmethod
    def _parse_objective(cls, value: Any) -> Any:
        return parse_objective(value) if isinstance(value, (str, Mapping)) else value

    @field_validator("sites", mode="before")
    @classmethod
    def _name_sites(cls, value: Any) -> Any:
        return _named_tables(value, "site")

    @field_validator("targets", mode="before")
    @classmethod
    def _name_targets(cls, value: Any) -> Any:
        return _named_tables(value, "target")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.targets:
            raise ValueError("no targets: declare at least one [targets.NAME] table")
        if self.sites:
            unknown = sorted({t.site for t in self.targets.values()} - set(self.sites))
            if unknown:
                raise ValueError(
                    f"target(s) name site(s) {', '.join(map(repr, unknown))} that no [sites.NAME] table "
                    f"declares; sites: {', '.join(self.sites)}"
                )
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) exceeds "
                f"max_new_tokens_limit ({self.max_new_tokens_limit})"
            )
        return self

    def engine_of(self, target: str | Target) -> str:
        """The engine a target's workers run: its own, else the top-level one."""
        found = self.target(target) if isinstance(target, str) else target
        return found.engine or self.engine

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"unknown target {name!r}; targets in this config: {', '.join(self.targets)}"
            ) from None


def _named_tables(value: Any, what: str) -> Any:
    """``[targets.gpu]`` tables get ``name = "gpu"``; a name inside the table must agree."""
    if not isinstance(value, Mapping):
        return value
    named: dict[str, Any] = {}
    for key, table in value.items():
        if isinstance(table, Mapping):
            if "name" in table and table["name"] != key:
                raise ValueError(
                    f"{what} '{key}' has name = {table['name']!r}; drop 'name' or make them equal"
                )
            table = {**table, "name": key}
        named[key] = table
    return named


def _looks_like_time(text: str) -> bool:
    """Whether a deadline is a time rather than a duration: it has a date (``2023-06-02...``)."""
    head = text.strip()[:10]
    return len(head) == 10 and head[4] == "-" and head[7] == "-" and head.replace("-", "").isdigit()


# Settings that may come from HPCQUEUE_<NAME> environment variables (scalars and paths only); the names are
# those of the config file (``lambda``, ``deadline``).
_ENV_FIELDS = (
    "model",
    "engine",
    "policy",
    "lambda",
    "deadline",
    "start",
    "slot",
    "objective",
    "defer",
    "max_new_tokens",
    "max_new_tokens_limit",
    "max_line_bytes",
    "max_input_bytes",
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
    for site in (data.get("sites") or {}).values() if isinstance(data.get("sites"), dict) else ():
        if not isinstance(site, dict):
            continue
        for key in SITE_PATH_KEYS:
            value = site.get(key)
            if isinstance(value, str) and value not in (*COOLING_MODELS, *POWER_MODELS):
                site[key] = str((base / os.path.expanduser(value)).resolve())
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
    given_flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged.update(given_flags)
    if merged.get("lambda") is not None and merged.get("objective") is not None:
        where = {
            key: f"option --{key}"
            if key in given_flags
            else f"{ENV_PREFIX}{key.upper()}"
            if key in env
            else origin
            for key in ("lambda", "objective")
        }
        raise ConfigError(
            f"both lambda ({where['lambda']}) and objective ({where['objective']}) are given: lambda is "
            "shorthand for objective energy=λ,runtime=1−λ; give one of them"
        )
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, origin, env, flags or {})) from None
    if "engine" in given_flags or "engine" in env:
        # asked for on the command line or in the environment: every target runs it
        targets = {n: t.model_copy(update={"engine": settings.engine}) for n, t in settings.targets.items()}
        settings = settings.model_copy(update={"targets": targets})
    return settings


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
            tables: dict[str, type[BaseModel]] = {"targets": Target, "sites": SiteSpec}
            model = tables.get(loc[0], Settings) if len(loc) >= 3 else Settings
            if loc[0] == "sites" and len(loc) >= 4 and loc[2] == "wind":
                model = WindTurbines
            valid = ", ".join(
                sorted(
                    info.alias or name
                    for name, info in model.model_fields.items()
                    if name not in ("name", "config_path", "deadline_at")
                )
            )
            lines.append(f"{source}: {key}: unknown key; valid keys: {valid}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            if not loc:  # a check across settings: the whole config is no help to show
                lines.append(f"{source}: {message}")
                continue
            got = repr(error.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            lines.append(f"{source}: {key}: {message} (got {got})")
    return "invalid settings:\n  " + "\n  ".join(lines)
