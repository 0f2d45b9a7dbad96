"""The worker: runs on the compute node, turns task directories into outputs and metrics.

``run_tasks`` is what submitit runs (one call per array element or local job). For each task directory it
waits for the task's begin time in the batch's ``schedule.json`` (a local worker holds tasks planned for
later hours; on Slurm the job starts after its ``--begin``, so there is nothing left to wait), takes the
task's lock, fails the task without running it when the batch's deadline has passed, resumes from
``partial.jsonl`` when an earlier run was cut short, generates with the engine the task names (``engine``:
``engine.Engine``, transformers, or ``vllm_engine.VllmEngine``, vLLM; loaded once per process and model),
meters the task, the model load and every generation batch (with vLLM: every interval between two hand-overs
of finished requests), splits the energy over requests (``attribution``: ``token-share-v1``, or
``step-token-share-v1`` for vLLM), and writes ``output.jsonl`` then ``metrics.json`` atomically. The task is
done when ``metrics.json`` exists; formats are in docs/internals.md.

Workers only write files (owner-only, whatever the umask): the collect step reads them into the ledger.

Run a task by hand (for debugging) with ``python -m hpcqueue.worker TASK_DIR...``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from hpcqueue.config import DEFAULT_ENGINE, ENGINES, EngineName
from hpcqueue.dispatch.batchdir import (
    INPUT,
    METRICS,
    OUTPUT,
    PARTIAL,
    TASK_SPEC,
    hold_task_lock,
    task_location,
)
from hpcqueue.errors import ConfigError, ModelError, StopRequested, TaskLocked
from hpcqueue.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    open_nofollow,
    private_umask,
    read_bytes_nofollow,
    read_text_nofollow,
)
from hpcqueue.worker.attribution import ATTRIBUTION_RULE, RULE_TEXTS, attribute_rest, share

if TYPE_CHECKING:
    from hpcqueue.ingest import Request
    from hpcqueue.meters.base import Measurement, Meter
    from hpcqueue.models import ModelRef
    from hpcqueue.worker.engine import Engine
    from hpcqueue.worker.vllm_engine import VllmEngine

log = logging.getLogger(__name__)


#: Input lines can be long chats; the driver already enforced the user's limit on the original line.
_TASK_LINE_BYTES = 1 << 30
_TRACEBACK_LINES = 30


class _Engine(Protocol):
    """What the worker needs of an engine (``engine.Engine`` and ``vllm_engine.VllmEngine`` have it)."""

    name: ClassVar[str]
    version: str
    attribution_rule: ClassVar[str]
    #: True: the engine sets each record's energy_j itself; False: the worker splits each batch's energy.
    attributes_energy: ClassVar[bool]

    def generate(
        self,
        requests: Sequence[Request],
        *,
        on_batch: Callable[[list[dict[str, Any]], Measurement | None], None] | None = None,
        make_meter: Callable[[], Meter] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineOptions:
    """How a task runs its model: the engine keys of task.json (docs/internals.md), checked."""

    engine: EngineName = "transformers"  # config.DEFAULT_ENGINE
    device: str = "auto"
    dtype: str = "auto"
    #: transformers: most requests per generation batch; vLLM: most sequences running at once (max_num_seqs)
    batch_size: int = 16
    max_batch_tokens: int | None = None  # transformers only (None: the engine's default)
    tensor_parallel_size: int = 1  # vLLM only, as the next two
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> EngineOptions:
        """Read and check the keys; ``ConfigError`` names the key and what is valid."""
        engine = spec.get("engine") or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ConfigError(
                f"task.json: engine {engine!r} is not known; valid values: {', '.join(ENGINES)}"
            )
        memory = spec.get("gpu_memory_utilization")
        if memory is not None and (
            isinstance(memory, bool) or not isinstance(memory, (int, float)) or not 0 < memory <= 1
        ):
            raise ConfigError(
                f"task.json: gpu_memory_utilization must be a number in (0, 1] or null, not {memory!r}"
            )
        return cls(
            engine=cast(EngineName, engine),
            device=str(spec.get("device") or "auto"),
            dtype=str(spec.get("dtype") or "auto"),
            batch_size=_positive_int(spec, "batch_size", 16),
            max_batch_tokens=_positive_int(spec, "max_batch_tokens", None),
            tensor_parallel_size=_positive_int(spec, "tensor_parallel_size", 1),
            gpu_memory_utilization=None if memory is None else float(memory),
            max_model_len=_positive_int(spec, "max_model_len", None),
        )

    def cache_key(self, model_path: Path) -> tuple[Any, ...]:
        """What a cached engine must match to be reused: the transformers engine takes its batching from
        each task, vLLM fixes every option when it starts."""
        key: tuple[Any, ...] = (self.engine, str(model_path), self.device, self.dtype)
        if self.engine == "vllm":
            key += (
                self.batch_size,
                self.tensor_parallel_size,
                self.gpu_memory_utilization,
                self.max_model_len,
            )
        return key


def _positive_int(spec: dict[str, Any], key: str, default: Any) -> Any:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"task.json: {key} must be a positive integer or null, not {value!r}")
    return value


def _engine_class(name: str) -> type[Engine] | type[VllmEngine]:
    """The class of a named engine (importing neither torch nor vLLM yet)."""
    if name == "vllm":
        from hpcqueue.worker.vllm_engine import VllmEngine

        return VllmEngine
    from hpcqueue.worker.engine import Engine

    return Engine


# One engine per process, reused by the following tasks when they name the same model files and options.
_ENGINES: dict[tuple[Any, ...], _Engine] = {}

#: How often a worker waiting for a task's begin time reads the batch's schedule again, so that a re-plan
#: that moves the time takes effect (tests lower it).
SCHEDULE_POLL_S = 30.0
#: The longest single sleep while waiting: a SIGTERM is answered within it.
_STOP_CHECK_S = 1.0


@dataclass
class _Run:
    """What one attempt at a task has gathered so far."""

    spec: dict[str, Any]
    started_at: float
    measurements: list[dict[str, Any]] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=dict)
    new_records: list[dict[str, Any]] = field(default_factory=list)
    batch_energy_j: float = 0.0
    engine: str | None = None
    engine_version: str | None = None
    attribution_rule: str = ATTRIBUTION_RULE

    def add_measurement(self, scope: str, measurement: Measurement) -> None:
        seq = self.seq.get(scope, 0)
        self.seq[scope] = seq + 1
        self.measurements.append({"scope": scope, "seq": seq, **measurement.to_dict()})


_stop = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    log.warning(
        "SIGTERM: stopping (a waiting worker at once, a running task after its current generation batch or "
        "step; finished outputs stay in partial.jsonl)"
    )
    _stop.set()


def run_tasks(task_dirs: list[str]) -> list[dict[str, Any]]:
    """Run task directories in order; return one summary per task.

    Before each task the worker waits for its begin time in the batch's schedule (reading the schedule again
    every ``SCHEDULE_POLL_S``, so a re-plan that moves it takes effect). A finished task (``metrics.json``
    exists) is skipped; a task locked by another live worker is reported ``locked`` and left alone; a task
    that cannot run at all, or whose batch's deadline passed before it started, gets a ``failed``
    metrics.json and the worker goes on with the next one. Summaries: ``{"task_dir", "state", "n_requests",
    "n_failed", "energy_j", "error"}`` with state ``completed``, ``failed``, ``skipped`` or ``locked``.

    SIGTERM (what ``scancel`` sends before it kills) stops the worker after the generation batch it is in (the
    vLLM engine: after its current step, aborting the sequences in flight; within a second while it waits),
    instead of letting it burn energy until Slurm's kill timeout; the process then exits with status 143.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _request_stop)
    try:
        summaries = []
        with private_umask():  # outputs hold what the users asked and got: owner-only
            for task_dir in task_dirs:
                if _stop.is_set():
                    raise StopRequested()
                path = Path(task_dir)
                if not (path / METRICS).exists():
                    wait_for_begin(path)
                summaries.append(run_task(path))
        return summaries
    except StopRequested:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def wait_for_begin(task_dir: Path) -> None:
    """Sleep until the task's begin time in its batch's ``schedule.json`` (at once for a task without one, or
    a directory outside a batch). The schedule is read again at least every ``SCHEDULE_POLL_S``, so a
    re-plan that moves the time takes effect; SIGTERM ends the wait with ``StopRequested``."""
    location = task_location(task_dir)
    if location is None:
        return
    batch, index = location
    announced: float | None = None
    while True:
        try:
            begin_at = batch.begin_times().get(index)
        except (OSError, ValueError) as exc:
            # the task itself then fails on the same file (its deadline check), saying why
            log.warning("task %s: cannot read the batch's schedule, not waiting: %s", task_dir, exc)
            return
        now = time.time()
        if begin_at is None or begin_at <= now:
            if announced is not None:
                log.info("task %s: its begin time has come", task_dir)
            return
        if begin_at != announced:
            log.info(
                "task %s waits for its %sbegin time %s (in %.0f s)",
                task_dir,
                "new " if announced is not None else "",
                _local_iso(begin_at),
                begin_at - now,
            )
            announced = begin_at
        until = min(begin_at, now + SCHEDULE_POLL_S)
        while (left := until - time.time()) > 0:
            if _stop.is_set():
                raise StopRequested()
            time.sleep(min(left, _STOP_CHECK_S))
        if _stop.is_set():
            raise StopRequested()


def _deadline_passed(task_dir: Path) -> str | None:
    """Why the task must not run when its batch's deadline has passed (None while it may run)."""
    location = task_location(task_dir)
    if location is None:
        return None
    deadline_at = location[0].deadline_at()
    if deadline_at is None or time.time() < deadline_at:
        return None
    return (
        f"the batch's deadline {_local_iso(deadline_at)} passed before this task started; "
        "`hpcqueue retry` re-plans it"
    )


def _local_iso(epoch: float) -> str:
    """An epoch time as ISO 8601 local time with its offset (unambiguous in a log read anywhere)."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def run_task(task_dir: Path) -> dict[str, Any]:
    """Run one task directory (see ``run_tasks``)."""
    summary: dict[str, Any] = {
        "task_dir": str(task_dir),
        "state": "skipped",
        "n_requests": None,
        "n_failed": None,
        "energy_j": None,
        "error": None,
    }
    if (task_dir / METRICS).exists():
        return summary
    try:
        with hold_task_lock(task_dir):
            if (task_dir / METRICS).exists():  # finished by another worker since the check above
                return summary
            metrics = _run_locked(task_dir)
    except TaskLocked:
        log.info("task %s is locked by another worker; leaving it", task_dir)
        summary["state"] = "locked"
        return summary
    summary.update(
        state=metrics["state"],
        n_requests=metrics.get("n_requests"),
        n_failed=metrics.get("n_failed"),
        energy_j=metrics.get("energy_j"),
        error=(metrics.get("error") or {}).get("message"),
    )
    return summary


def _run_locked(task_dir: Path) -> dict[str, Any]:
    run = _Run(spec={}, started_at=time.time())
    task_meter: Meter | None = None
    try:
        run.spec = _read_spec(task_dir)
        too_late = _deadline_passed(task_dir)
        if too_late is not None:
            log.warning("task %s not run: %s", task_dir, too_late)
            metrics = _failed_metrics(run, None, {"code": "deadline", "message": too_late})
        else:
            task_meter = _meter_factory(run.spec)()
            task_meter.start()
            metrics = _execute(task_dir, run, task_meter)
    except Exception as exc:
        log.exception("task %s failed", task_dir)
        error = {
            "type": type(exc).__name__,
            "message": str(exc) or type(exc).__name__,
            "traceback": "".join(traceback.format_exc().splitlines(keepends=True)[-_TRACEBACK_LINES:]),
        }
        metrics = _failed_metrics(run, task_meter, error)
    atomic_write_json(task_dir / METRICS, metrics)
    return metrics


def _failed_metrics(run: _Run, task_meter: Meter | None, error: dict[str, Any]) -> dict[str, Any]:
    """metrics.json of a task that could not run (``error``: ``{"type", "message", "traceback"}``, or
    ``{"code": "deadline", "message"}`` when the deadline cut it), with the energy metered until then."""
    metrics = _base_metrics(run)
    if task_meter is not None and task_meter.running:
        measurement = task_meter.stop()
        run.add_measurement("task", measurement)
        metrics.update(
            energy_j=measurement.total_energy_j, energy_method=measurement.method, meter=measurement.meter
        )
    metrics.update(state="failed", ended_at=time.time(), error=error)
    return metrics


def _read_spec(task_dir: Path) -> dict[str, Any]:
    path = task_dir / TASK_SPEC
    try:
        spec = json.loads(read_text_nofollow(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} is missing: this is not a task directory of a batch") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the batch directory is damaged") from exc
    missing = [key for key in ("model", "input_format", "hardware") if key not in spec]
    if missing:
        raise ValueError(f"{path} lacks key(s) {', '.join(missing)}; the batch directory is damaged")
    return dict(spec)


def _meter_factory(spec: dict[str, Any]) -> Any:
    from hpcqueue.meters import get_meter

    name = str(spec.get("meter") or "auto")
    hardware = str(spec["hardware"])
    nominal_power_w = spec.get("nominal_power_w")

    def make_meter() -> Meter:
        return get_meter(name, hardware=hardware, nominal_power_w=nominal_power_w)

    return make_meter


def _execute(task_dir: Path, run: _Run, task_meter: Meter) -> dict[str, Any]:
    from hpcqueue.ingest import ReadOptions, load_task_input

    spec = run.spec
    engine_options = EngineOptions.from_spec(spec)
    engine_class = _engine_class(engine_options.engine)
    run.engine = engine_options.engine
    run.attribution_rule = engine_class.attribution_rule
    options = ReadOptions(
        max_line_bytes=_TASK_LINE_BYTES,
        default_max_new_tokens=int(spec.get("default_max_new_tokens", 64)),
        max_new_tokens_limit=int(spec.get("max_new_tokens_limit", 32768)),
        skip_invalid=False,
    )
    requests = load_task_input(task_dir / INPUT, spec["input_format"], options)
    kept = _resume(task_dir / PARTIAL)
    wanted = {r.line for r in requests}
    kept = {line: record for line, record in kept.items() if line in wanted}
    todo = [r for r in requests if r.line not in kept]
    if kept:
        log.info("task %s: resuming, %d of %d requests already done", task_dir, len(kept), len(requests))

    make_meter = _meter_factory(spec)
    if not todo:  # every request was finished by an earlier attempt: no model to load
        run.engine_version = engine_class.library_version()
    else:
        engine = _engine_for(spec, engine_options, run, make_meter)
        run.engine_version = engine.version
        # Appended through no symbolic link: a link planted here would make the worker write into its target.
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        with os.fdopen(open_nofollow(task_dir / PARTIAL, append), "a", encoding="utf-8") as partial:

            def on_batch(records: list[dict[str, Any]], measurement: Measurement | None) -> None:
                if measurement is not None:
                    run.add_measurement("generation_batch", measurement)
                    run.batch_energy_j += measurement.total_energy_j
                if engine.attributes_energy:  # its records carry their shares of the measured intervals
                    for record in records:
                        record["energy_j"] = float(record.get("energy_j") or 0.0)
                elif measurement is not None:
                    share(records, measurement.total_energy_j)
                else:  # refused before any generation
                    for record in records:
                        record["energy_j"] = 0.0
                run.new_records += records
                partial.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                partial.flush()
                os.fsync(partial.fileno())
                if _stop.is_set():
                    raise StopRequested()

            try:
                engine.generate(todo, on_batch=on_batch, make_meter=make_meter, should_stop=_stop.is_set)
            except Exception:
                _drop_engines()  # it may be broken (a crashed vLLM engine): the next task loads it afresh
                raise

    records = {**kept, **{r["line"]: r for r in run.new_records}}
    missing = [r.line for r in requests if r.line not in records]
    if missing:
        raise RuntimeError(f"the engine returned no output for line(s) {missing[:10]}")
    ordered = [records[r.line] for r in sorted(requests, key=lambda r: r.line)]
    # The records carry their energy, so the task meter stops just before output.jsonl is written: the
    # write itself (small next to generation) is left out of the measurement.
    task_measurement = task_meter.stop()
    run.add_measurement("task", task_measurement)
    attribute_rest(run.new_records, task_measurement.total_energy_j, run.batch_energy_j)
    atomic_write_jsonl(task_dir / OUTPUT, ordered)

    metrics = _base_metrics(run)
    carried_energy_j = sum(float(r.get("energy_j") or 0.0) for r in kept.values())
    methods = {m["method"] for m in run.measurements}
    metrics.update(
        state="completed",
        ended_at=time.time(),
        n_requests=len(ordered),
        n_succeeded=sum(1 for r in ordered if r.get("error") is None),
        n_failed=sum(1 for r in ordered if r.get("error") is not None),
        n_resumed=len(kept),
        input_tokens=sum(int(r.get("input_tokens") or 0) for r in ordered),
        output_tokens=sum(int(r.get("output_tokens") or 0) for r in ordered),
        energy_j=task_measurement.total_energy_j + carried_energy_j,
        energy_method="estimated" if "estimated" in methods else "measured",
        meter=task_measurement.meter,
    )
    return metrics


def _engine_for(spec: dict[str, Any], options: EngineOptions, run: _Run, make_meter: Any) -> _Engine:
    """The process's engine for this task's model and options, loading (and metering) it when not loaded."""
    from hpcqueue.worker.engine import DEFAULT_MAX_BATCH_TOKENS, Engine

    ref = _model_ref(spec)
    key = options.cache_key(ref.path)
    engine = _ENGINES.get(key)
    if engine is None:
        _drop_engines()  # one model in memory at a time, freed before the next one loads
        meter = make_meter()
        meter.start()
        try:
            engine = _load_engine(ref, options)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot load model {ref.name!r} from {ref.path}: {exc}") from exc
        finally:
            run.add_measurement("model_load", meter.stop())
        _ENGINES[key] = engine
    if isinstance(engine, Engine):  # its batching belongs to the task, not to the cached engine
        engine.batch_size = options.batch_size
        engine.max_batch_tokens = options.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS
    return engine


def _load_engine(ref: ModelRef, options: EngineOptions) -> _Engine:
    if options.engine == "vllm":
        from hpcqueue.worker.vllm_engine import VllmEngine

        return VllmEngine(
            ref,
            device=options.device,
            dtype=options.dtype,
            batch_size=options.batch_size,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
        )
    from hpcqueue.worker.engine import Engine

    return Engine(ref, device=options.device, dtype=options.dtype, batch_size=options.batch_size)


def _drop_engines() -> None:
    """Close and forget the process's engines."""
    engines = list(_ENGINES.values())
    _ENGINES.clear()
    for engine in engines:
        try:
            engine.close()
        except Exception as exc:
            log.warning("closing the %s engine failed: %s", engine.name, exc)


def _model_ref(spec: dict[str, Any]) -> ModelRef:
    """The task's model files: its ``model_path`` when readable here, else its name resolved on this node."""
    from hpcqueue.models import ModelRef, model_fingerprint, resolve_model

    model_path = spec.get("model_path")
    if model_path and (Path(model_path) / "config.json").is_file():
        path = Path(model_path)
        ref = ModelRef(name=str(spec["model"]), path=path, fingerprint=model_fingerprint(path))
    else:
        if model_path:
            log.warning(
                "model_path %s is not readable on %s; resolving %r here",
                model_path,
                socket.gethostname(),
                spec["model"],
            )
        cache_dir = os.environ.get("HPCQUEUE_CACHE_DIR")
        ref = resolve_model(str(spec["model"]), cache_dir=Path(cache_dir) if cache_dir else None)
    return ref


def _resume(partial_path: Path) -> dict[int, dict[str, Any]]:
    """Records of an interrupted attempt, by line.

    A torn last line (an append cut short) is cut off so that appends stay valid. A damaged line elsewhere
    (not a whole record: the worker appends whole lines, so this is the disk's doing) is dropped with a
    warning naming it, ``partial.jsonl`` is rewritten without it, and its request runs again.
    """
    if not partial_path.exists():
        return {}
    data = read_bytes_nofollow(partial_path)
    end = data.rfind(b"\n") + 1
    records: dict[int, dict[str, Any]] = {}
    kept: list[bytes] = []
    damaged: list[int] = []
    for number, raw in enumerate(data[:end].splitlines(keepends=True), start=1):
        if not raw.strip():
            continue
        record = _partial_record(raw)
        if record is None:
            damaged.append(number)
            continue
        kept.append(raw)
        records.setdefault(int(record["line"]), record)
    if damaged:
        log.warning(
            "%s: line %s damaged (not a whole record): dropped, its request runs again",
            partial_path,
            ", ".join(map(str, damaged)),
        )
        atomic_write_bytes(partial_path, b"".join(kept))
    elif end < len(data):
        with os.fdopen(open_nofollow(partial_path, os.O_RDWR), "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return records


def _partial_record(raw: bytes) -> dict[str, Any] | None:
    """The record a line of ``partial.jsonl`` holds, or None when it is not one (a damaged line)."""
    try:
        record = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(record, dict) or not isinstance(record.get("line"), int) or "id" not in record:
        return None
    return record


def _base_metrics(run: _Run) -> dict[str, Any]:
    spec = run.spec
    env = os.environ
    return {
        "batch_id": spec.get("batch_id"),
        "task_index": spec.get("task_index"),
        "target": spec.get("target"),
        "state": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "started_at": run.started_at,
        "ended_at": None,
        "n_requests": spec.get("n_requests"),
        "n_succeeded": 0,
        "n_failed": 0,
        "n_resumed": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "model": spec.get("model"),
        "model_path": spec.get("model_path"),
        "hardware": spec.get("hardware"),
        "batch_size": spec.get("batch_size"),
        "energy_j": None,
        "energy_method": None,
        "meter": None,
        "engine": run.engine,
        "engine_version": run.engine_version,
        "attribution_rule": run.attribution_rule,
        "attribution_rule_text": RULE_TEXTS[run.attribution_rule],
        "measurements": run.measurements,
        "error": None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpcqueue.worker TASK_DIR...``: run task directories by hand, print the summaries."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print("usage: python -m hpcqueue.worker TASK_DIR [TASK_DIR...]")
        return 0 if args else 2
    summaries = run_tasks(args)
    print(json.dumps(summaries, indent=2))
    return 1 if any(s["state"] == "failed" for s in summaries) else 0


class TaskRunner:
    """The callable that submitit runs: ``TaskRunner()(task_dirs)``.

    It is checkpointable (see ``submitit.helpers.Checkpointable``): when Slurm signals a time-out or a
    pre-emption, submitit asks ``checkpoint()`` for the resubmission and requeues the job with the same task
    directories. The requeued worker resumes each task after the last generation batch in ``partial.jsonl``,
    so finished outputs are kept and none is produced twice.
    """

    def __call__(self, task_dirs: Sequence[str]) -> list[dict[str, Any]]:
        return run_tasks(list(task_dirs))

    def checkpoint(self, task_dirs: Sequence[str]) -> Any:
        from submitit.helpers import DelayedSubmission

        log.warning(
            "time limit or pre-emption: requeueing %d task(s); they resume from partial.jsonl", len(task_dirs)
        )
        return DelayedSubmission(TaskRunner(), list(task_dirs))
