"""The analytic estimate: energy and runtime of inference requests from a model's architecture and a hardware
class's spec sheet, with a few efficiency factors calibrated on measured profiles (:mod:`.calibration`).

**Work.** A request of ``n_in`` prompt tokens and ``n_out`` output tokens is a sequence of forward passes
(:mod:`.architecture` counts their FLOPs and bytes):

* with a KV cache (``kv_cache=True``, normal serving): the prefill of the ``n_in`` prompt tokens, which
  yields the first output token, then ``n_out − 1`` decode steps of one token at contexts
  ``n_in … n_in + n_out − 2``, each reading the weights and its sequence's cache;
* without one (``kv_cache=False``, how the published paper profiles were measured): ``n_out`` passes, each
  the prefill of the whole sequence so far (``n_in … n_in + n_out − 1`` tokens), so decode grows about
  quadratically with the output length.

At batch size B every pass runs B sequences of the same length: B times the FLOPs and each sequence's cache
traffic, the weights read once (prefill included).

**Time of a pass** (roofline with overheads)::

    t = layers · overhead + t_convert + max(t_compute, t_memory) + t_link
    t_compute = flops / (d · peak · u_compute)        t_memory = bytes / (d · bandwidth · u_memory)

``d`` is the number of devices the model is split over (tensor parallelism). The overhead is per layer and
per pass: the host-side cost of launching a layer's kernels, paid once per layer whatever the work, so that
it scales with the model's depth. ``t_convert`` is paid only where the hardware has no native arithmetic for
the dtype (bfloat16 on a V100 or an Apple GPU; ``ComputeSpec.native_dtype``): the weights are converted at
every pass, ``convert_weight_reads`` weight-sized sweeps of memory at full bandwidth
(``convert_weight_reads · weight_bytes / (d · bandwidth)``). ``t_link`` is tensor parallelism's all-reduce
traffic over the devices' link: two ring all-reduces of the activations per layer.

**Energy**, by domain:

* ``gpu`` (hardware of kind ``gpu``): the devices' idle power for the whole time plus, on top, a share of
  their dynamic range (TDP − idle) for each activity::

      d · (P_idle · t + (P_max − P_idle) · (power_compute · t_compute + power_memory · t_traffic))

  with ``t_traffic = t_memory + t_convert + t_link``. Two shares rather than one, because a memory-bound
  decode step draws far less than a compute-bound prefill (an A100 draws about 130 W in one and 250 W in
  the other), which a single share of "busy" time cannot follow. During the host-side overhead the devices
  draw their idle power;
* ``cpu``: for GPU hardware the host CPUs driving them, ``cpu_share`` × the nominal power of the job's CPUs
  (:func:`~hpcqueue.meters.hardware.nominal_cpu_power_w`) × the runtime; for CPU hardware the CPUs are the
  compute device and get the formula above (DRAM power is not modelled).

**Sums over the steps** are exact: the cost of a pass depends on the request only through its token count,
so one table of per-pass figures up to the longest context, and its prefix sums, give every request's total
as the difference of two table entries — a million requests cost a few array look-ups, not a loop.

**Per request**: a batch's cost divided by B, as the profiles' per-request figures are.

**Tensor parallelism**: when the weights plus the KV cache of the batch at the longest context do not fit
one device's memory less :data:`MEMORY_HEADROOM`, the model is split over the smallest power of two of the
node's GPUs that holds it (``gpus``, default all the node's GPUs); when the node cannot hold it the error
names the model's size, the memory and the GPUs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from hpcqueue.errors import ConfigError, InputError
from hpcqueue.estimate.architecture import DTYPE_BYTES, Architecture
from hpcqueue.meters.hardware import (
    DEFAULT_GENERIC_CPUS,
    ComputeSpec,
    get_hardware,
    nominal_cpu_power_w,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Domain = Literal["gpu", "cpu"]

#: Share of each device's memory kept free for activations, the framework's workspace (CUDA context,
#: cuBLAS workspace) and allocator fragmentation: the weights and KV cache may fill the other 90 %.
MEMORY_HEADROOM = 0.10
#: Host CPUs of a GPU job when none are given: one process driving a GPU keeps about two cores busy (the
#: paper profiles' CPU figures cover the two cores their process ran on).
DEFAULT_HOST_CPUS = 2
#: The link between GPUs without a fast one (``link_bandwidth_bps`` None): PCIe Gen4 x16, 32 GB/s each way.
PCIE_LINK_BPS = 32e9
#: The longest context (prompt + output tokens) a model is sized for unless told otherwise.
DEFAULT_MAX_CONTEXT_TOKENS = 4096
#: The longest context the per-pass tables are built for (4 Mi tokens: 32 MiB per table).
MAX_CONTEXT_TOKENS = 1 << 22


@dataclass(frozen=True)
class Factors:
    """How far a hardware class's real runs fall short of its spec sheet: the calibrated factors.

    ``u_compute`` and ``u_memory`` are the shares of peak FLOP/s and of memory bandwidth a pass reaches;
    ``overhead_s_per_layer`` the host-side time per layer of every pass; ``convert_weight_reads`` the cost
    of a dtype without native arithmetic, in weight-sized sweeps of memory per pass; ``power_compute`` and
    ``power_memory`` the shares of the devices' dynamic power range (TDP − idle) drawn while computing and
    while moving memory; ``cpu_share`` the share of the job's CPUs' nominal power the host draws while the
    job runs (GPU hardware only).
    """

    u_compute: float
    u_memory: float
    overhead_s_per_layer: float
    convert_weight_reads: float
    power_compute: float
    power_memory: float
    cpu_share: float

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"factor {name} must be a finite number > 0, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in FACTOR_NAMES}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> Factors:
        return cls(**{name: float(values[name]) for name in FACTOR_NAMES})


FACTOR_NAMES: tuple[str, ...] = (
    "u_compute",
    "u_memory",
    "overhead_s_per_layer",
    "convert_weight_reads",
    "power_compute",
    "power_memory",
    "cpu_share",
)


@dataclass(frozen=True)
class Estimate:
    """Per-request predictions aligned with the token arrays given to :meth:`AnalyticModel.predict`:
    ``energy_j`` is the sum of ``energy_by_domain_j`` (``gpu`` and ``cpu`` on GPU hardware, ``cpu`` on CPU
    hardware)."""

    energy_j: FloatArray
    runtime_s: FloatArray
    energy_by_domain_j: dict[str, FloatArray]


@dataclass(frozen=True)
class AnalyticModel:
    """The analytic cost of requests of one model on one hardware class (see the module's docstring).

    Built by :func:`build_model` (given factors) or :func:`hpcqueue.estimate.calibration.analytic_model`
    (calibrated factors and prediction intervals). ``energy_interval_factors`` and
    ``runtime_interval_factors`` are the multiplicative (low, high) bounds of a 90 % prediction interval:
    ``[low · x, high · x]`` for a prediction ``x`` — or for a sum of predictions, since the errors are
    systematic (the same hardware, software and model make every request too cheap or too dear together);
    ``None`` when the model was built without them.
    """

    architecture: Architecture
    hardware: str
    spec: ComputeSpec
    factors: Factors
    kv_cache: bool
    batch_size: int
    tensor_parallel: int
    cpus: int
    host_cpu_power_w: float
    max_context_tokens: int
    energy_interval_factors: tuple[float, float] | None = None
    runtime_interval_factors: tuple[float, float] | None = None
    factors_basis: str = "given"
    notes: tuple[str, ...] = field(default=())

    @property
    def dtype(self) -> str:
        return self.architecture.dtype

    def predict(self, input_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike) -> Estimate:
        """Energy (J), runtime (s) and energy by domain (J) of each request, per request at this model's
        batch size. Token counts are whole numbers ≥ 1; a request longer than ``max_context_tokens`` is
        fine while its KV cache still fits the model's devices (else :class:`InputError`)."""
        n_in, n_out = _token_arrays(input_tokens, output_tokens)
        b = self.batch_size
        if n_in.size == 0:
            empty = np.zeros(0)
            return Estimate(empty, empty.copy(), {d: empty.copy() for d in self.domains})
        longest = int((n_in + n_out).max())
        if longest > self.max_context_tokens:
            self._check_longer_context(longest)
        if self.kv_cache:
            prefill = self._prefill_pass(n_in.astype(float))
            decode = _prefix(self._decode_pass(np.arange(longest, dtype=float)))
            # decode steps at contexts n_in … n_in + n_out − 2
            sums = prefill + decode[:, n_in + n_out - 1] - decode[:, n_in]
        else:
            passes = _prefix(self._prefill_pass(np.arange(longest + 1, dtype=float)))
            # passes over n_in … n_in + n_out − 1 tokens
            sums = passes[:, n_in + n_out] - passes[:, n_in]
        time_s, compute_s, traffic_s = sums
        domains = self._energy_by_domain(time_s, compute_s, traffic_s)
        per_request = {name: joules / b for name, joules in domains.items()}
        total = np.sum(list(per_request.values()), axis=0)
        return Estimate(energy_j=total, runtime_s=time_s / b, energy_by_domain_j=per_request)

    def interval(
        self, values: npt.ArrayLike, quantity: Literal["energy", "runtime"]
    ) -> tuple[FloatArray, FloatArray]:
        """The 90 % interval [low, high] around predictions (or sums of them) of ``quantity``; raises
        ValueError when the model was built without interval factors."""
        factors = self.energy_interval_factors if quantity == "energy" else self.runtime_interval_factors
        if factors is None:
            raise ValueError("this analytic model was built without interval factors")
        array = np.asarray(values, dtype=float)
        return array * factors[0], array * factors[1]

    def _check_longer_context(self, context: int) -> None:
        """A request longer than the model was sized for: fine while the KV cache still fits its devices."""
        memory = self.spec.memory_bytes
        if memory is None:
            return
        needed = _memory_needed(self.architecture, self.batch_size, context)
        usable = self.tensor_parallel * memory * (1 - MEMORY_HEADROOM)
        if needed > usable:
            raise InputError(
                f"a request needs a context of {context} tokens: {_gb(needed)} of weights and KV cache "
                f"(batch {self.batch_size}), more than the {_gb(usable)} usable on the "
                f"{self.tensor_parallel} device(s) the model was sized for (contexts up to "
                f"{self.max_context_tokens} tokens); build it with max_context_tokens >= {context}"
            )

    @property
    def domains(self) -> tuple[Domain, ...]:
        return ("gpu", "cpu") if self.spec.kind == "gpu" else ("cpu",)

    def with_factors(self, factors: Factors) -> AnalyticModel:
        """The same model with other factors (calibration refits them)."""
        return replace(self, factors=factors)

    # -- one pass ----------------------------------------------------------------------------------------

    def _prefill_pass(self, tokens: FloatArray) -> FloatArray:
        """Time, compute time and memory-traffic time (s; rows of the result) of a pass over ``tokens``
        tokens per sequence, for the whole batch."""
        poly = _polynomials(self.architecture)
        b = self.batch_size
        flops = b * (poly.prefill_f0 + poly.prefill_f1 * tokens + poly.prefill_f2 * tokens**2)
        moved = poly.weight_bytes + b * poly.kv_bytes_per_token * tokens
        return self._pass_time(flops, moved, tokens)

    def _decode_pass(self, context: FloatArray) -> FloatArray:
        """Time, compute time and memory-traffic time (s) of a cached decode step at ``context`` cached
        tokens, for the whole batch."""
        poly = _polynomials(self.architecture)
        b = self.batch_size
        flops = b * (poly.decode_f0 + poly.decode_f1 * context)
        moved = poly.weight_bytes + b * poly.kv_bytes_per_token * (context + 1)
        return self._pass_time(flops, moved, np.ones_like(context))

    def _pass_time(self, flops: FloatArray, moved: FloatArray, tokens: FloatArray) -> FloatArray:
        spec, f, d = self.spec, self.factors, self.tensor_parallel
        compute_s = flops / (d * spec.peak_flops * f.u_compute)
        memory_s = moved / (d * spec.memory_bandwidth_bps * f.u_memory)
        fixed_s = self.architecture.layers * f.overhead_s_per_layer + self._convert_s()
        link_s = self._link_s(tokens)
        time_s = fixed_s + np.maximum(compute_s, memory_s) + link_s
        traffic_s = memory_s + self._convert_s() + link_s
        return np.stack([time_s, compute_s, traffic_s])

    def _convert_s(self) -> float:
        """The conversion of the weights at every pass, where the dtype is not native (else 0)."""
        if self.spec.native_dtype:
            return 0.0
        weights = _polynomials(self.architecture).weight_bytes
        bandwidth = self.tensor_parallel * self.spec.memory_bandwidth_bps
        return self.factors.convert_weight_reads * weights / bandwidth

    def _link_s(self, tokens: FloatArray) -> FloatArray | float:
        """Tensor parallelism's all-reduce time of a pass: two ring all-reduces per layer of the batch's
        activations (``tokens × hidden`` values per sequence), each moving 2(d − 1)/d of the message over
        every device's link."""
        d = self.tensor_parallel
        if d == 1:
            return 0.0
        link = self.spec.link_bandwidth_bps or PCIE_LINK_BPS
        arch = self.architecture
        message = self.batch_size * tokens * arch.hidden * arch.dtype_bytes
        return 2 * arch.layers * 2 * (d - 1) / d * message / link

    def _energy_by_domain(
        self, time_s: FloatArray, compute_s: FloatArray, traffic_s: FloatArray
    ) -> dict[str, FloatArray]:
        spec, f = self.spec, self.factors
        dynamic_w = spec.power_max_w - spec.power_idle_w
        device = spec.power_idle_w * time_s + dynamic_w * (
            f.power_compute * compute_s + f.power_memory * traffic_s
        )
        if spec.kind == "gpu":
            return {
                "gpu": self.tensor_parallel * device,
                "cpu": f.cpu_share * self.host_cpu_power_w * time_s,
            }
        return {"cpu": device}


def build_model(
    architecture: Architecture,
    hardware: str,
    factors: Factors,
    *,
    dtype: str | None = None,
    kv_cache: bool = True,
    batch_size: int = 1,
    gpus: int | None = None,
    cpus: int | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    tensor_parallel: int | None = None,
    energy_interval_factors: tuple[float, float] | None = None,
    runtime_interval_factors: tuple[float, float] | None = None,
    factors_basis: str = "given",
    notes: tuple[str, ...] = (),
) -> AnalyticModel:
    """The analytic model of ``architecture`` in ``dtype`` (default: the architecture's) on ``hardware``.

    ``gpus`` is how many of the node's GPUs the model may be split over (default: all of them);
    ``cpus`` the job's logical CPUs (GPU hardware: the host CPUs, default :data:`DEFAULT_HOST_CPUS`; CPU
    hardware: the CPUs computing, default as :meth:`~hpcqueue.meters.hardware.HardwareClass.compute_spec`
    takes it). The tensor-parallel degree is chosen for contexts of up to ``max_context_tokens`` tokens,
    unless ``tensor_parallel`` fixes it (a measured profile's: then a model that seems not to fit is a
    note, not an error, since the run happened).

    Raises :class:`ConfigError` for an unknown hardware class, a dtype the model or the hardware does not
    support, a batch size below 1, or a model that does not fit the GPUs given — each listing what is valid.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    if (
        isinstance(max_context_tokens, bool)
        or not isinstance(max_context_tokens, (int, np.integer))
        or not 1 <= max_context_tokens <= MAX_CONTEXT_TOKENS
    ):
        raise ConfigError(
            f"max_context_tokens must be a whole number from 1 to {MAX_CONTEXT_TOKENS}, got "
            f"{max_context_tokens!r}"
        )
    dtype = dtype or architecture.dtype
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not supported; valid dtypes: {', '.join(DTYPE_BYTES)}")
    arch = replace(architecture, dtype=dtype)
    hw = get_hardware(hardware)
    spec = hw.compute_spec(dtype, cpus=cpus)
    notes_list = list(notes)
    if not spec.native_dtype:
        notes_list.append(
            f"{hardware} has no native {dtype} arithmetic: its spec sheet figure for {dtype} is the rate of "
            "the fallback, and every pass pays for converting the weights (convert_weight_reads)"
        )
    if spec.kind == "gpu":
        host_cpus = DEFAULT_HOST_CPUS if cpus is None else cpus
        host_w = nominal_cpu_power_w(hardware, host_cpus)
        d = _tensor_parallel(arch, spec, batch_size, max_context_tokens, gpus, tensor_parallel, notes_list)
    else:
        host_cpus = cpus if cpus is not None else (hw.logical_cpus or DEFAULT_GENERIC_CPUS)
        host_w = 0.0  # the CPUs compute: their power is the device's
        d = 1
        if gpus not in (None, 0, 1):
            raise ConfigError(f"hardware class {hardware!r} has no GPUs: gpus={gpus} cannot apply to it")
        _check_fits(arch, spec, batch_size, max_context_tokens, notes_list, hardware)
    if d > 1:
        notes_list.append(
            f"tensor parallel over {d} GPUs: {_gb(_memory_needed(arch, batch_size, max_context_tokens))} of "
            f"weights and KV cache (batch {batch_size} × {max_context_tokens} tokens) do not fit one "
            f"{_gb(spec.memory_bytes or 0)} device with {100 * MEMORY_HEADROOM:.0f} % headroom; all-reduce "
            "traffic over the GPUs' link is added to every pass"
            + ("" if spec.link_bandwidth_bps else " (no fast link between these GPUs: PCIe Gen4 x16 assumed)")
        )
    return AnalyticModel(
        architecture=arch,
        hardware=hardware,
        spec=spec,
        factors=factors,
        kv_cache=kv_cache,
        batch_size=int(batch_size),
        tensor_parallel=d,
        cpus=int(host_cpus),
        host_cpu_power_w=float(host_w),
        max_context_tokens=int(max_context_tokens),
        energy_interval_factors=energy_interval_factors,
        runtime_interval_factors=runtime_interval_factors,
        factors_basis=factors_basis,
        notes=tuple(notes_list),
    )


# -- memory and tensor parallelism ---------------------------------------------------------------------------


def _memory_needed(arch: Architecture, batch_size: int, context: int) -> float:
    """Bytes of the weights and of the KV cache of ``batch_size`` sequences of ``context`` tokens."""
    return float(arch.weight_bytes() + batch_size * context * arch.kv_bytes_per_token())


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB"


def _tensor_parallel(
    arch: Architecture,
    spec: ComputeSpec,
    batch_size: int,
    context: int,
    gpus: int | None,
    fixed: int | None,
    notes: list[str],
) -> int:
    """The number of GPUs the model is split over: ``fixed``, else the smallest power of two up to ``gpus``
    whose memory holds the model (see the module's docstring)."""
    node = spec.devices
    if gpus is None:
        gpus = node
    if isinstance(gpus, bool) or not isinstance(gpus, (int, np.integer)) or not 1 <= gpus <= node:
        raise ConfigError(f"gpus must be a whole number from 1 to {node} (GPUs per {spec.hardware} node)")
    needed = _memory_needed(arch, batch_size, context)
    usable = None if spec.memory_bytes is None else spec.memory_bytes * (1 - MEMORY_HEADROOM)
    if fixed is not None:
        if usable is not None and needed > fixed * usable:
            notes.append(
                f"{arch.name} in {arch.dtype} needs {_gb(needed)} with its KV cache, more than the "
                f"{_gb(fixed * usable)} usable on {fixed} device(s) of {spec.hardware}; it ran, so the "
                "framework spilled or used memory the headroom keeps free"
            )
        return fixed
    if usable is None:
        notes.append(
            f"{spec.hardware} has no published device memory: the model is assumed to fit one device"
        )
        return 1
    d = 1
    while d <= gpus:
        if needed <= d * usable:
            return d
        d *= 2
    wanted = math.ceil(needed / usable)
    at_least = 1 << (wanted - 1).bit_length()
    fits_node = at_least <= node
    fix = (
        f"it needs at least {at_least} GPUs of this class (give gpus >= {at_least})"
        if fits_node
        else f"even the node's {node} GPUs hold only {_gb(node * usable)}"
    )
    raise ConfigError(
        f"{arch.name} in {arch.dtype} does not fit: {_gb(arch.weight_bytes())} of weights + "
        f"{_gb(needed - arch.weight_bytes())} of KV cache (batch {batch_size} × {context} tokens) = "
        f"{_gb(needed)}; {spec.hardware} has {_gb(spec.memory_bytes or 0)} per GPU ({_gb(usable)} usable "
        f"with {100 * MEMORY_HEADROOM:.0f} % headroom) and {gpus} GPU(s) may be used: {fix}. A smaller "
        "dtype, batch or context also helps"
    )


def _check_fits(
    arch: Architecture, spec: ComputeSpec, batch_size: int, context: int, notes: list[str], hardware: str
) -> None:
    """CPU hardware: the model must fit the node's memory (no splitting)."""
    if spec.memory_bytes is None:
        notes.append(f"{hardware} has no published memory size: the model is assumed to fit")
        return
    needed = _memory_needed(arch, batch_size, context)
    usable = spec.memory_bytes * (1 - MEMORY_HEADROOM)
    if needed > usable:
        raise ConfigError(
            f"{arch.name} in {arch.dtype} does not fit: {_gb(needed)} of weights and KV cache (batch "
            f"{batch_size} × {context} tokens) against {_gb(usable)} usable of {hardware}'s "
            f"{_gb(spec.memory_bytes)} ({100 * MEMORY_HEADROOM:.0f} % headroom). A smaller dtype, batch or "
            "context helps"
        )


# -- the work of a pass as polynomials in its token count ---------------------------------------------------


@dataclass(frozen=True)
class _Polynomials:
    """FLOPs of one sequence's prefill of L tokens (f0 + f1·L + f2·L²) and of a cached decode step at
    context c (d0 + d1·c); the weights' and one token's cache bytes."""

    prefill_f0: float
    prefill_f1: float
    prefill_f2: float
    decode_f0: float
    decode_f1: float
    weight_bytes: float
    kv_bytes_per_token: float


@functools.lru_cache(maxsize=256)
def _polynomials(arch: Architecture) -> _Polynomials:
    """The coefficients, read off :class:`Architecture`'s own counts (a quadratic and a line through
    three and two of its points), so the two always agree."""
    p0, p1, p2 = (arch.prefill(n).flops for n in (0, 1, 2))
    f2 = (p2 - 2 * p1 + p0) / 2
    d0, d1 = (arch.decode_step(c).flops for c in (0, 1))
    return _Polynomials(
        prefill_f0=p0,
        prefill_f1=p1 - p0 - f2,
        prefill_f2=f2,
        decode_f0=d0,
        decode_f1=d1 - d0,
        weight_bytes=float(arch.weight_bytes()),
        kv_bytes_per_token=float(arch.kv_bytes_per_token()),
    )


def _prefix(values: FloatArray) -> FloatArray:
    """Per row, ``out[:, k] = values[:, 0] + … + values[:, k − 1]`` (``out[:, 0] = 0``)."""
    out = np.zeros((values.shape[0], values.shape[1] + 1))
    np.cumsum(values, axis=1, out=out[:, 1:])
    return out


def _token_arrays(input_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    arrays = []
    for name, raw in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        values = np.atleast_1d(np.asarray(raw, dtype=float))
        bad = ~np.isfinite(values) | (values < 1) | (values != np.round(values))
        if values.ndim != 1:
            raise InputError(f"{name} must be a one-dimensional array of token counts")
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{name} must be whole numbers >= 1; row {i} has {values[i]:g} ({int(bad.sum())} bad row(s))"
            )
        arrays.append(values.astype(np.int64))
    n_in, n_out = arrays
    if n_in.shape != n_out.shape:
        raise InputError(
            f"input_tokens and output_tokens must have the same length, got {n_in.size} and {n_out.size}"
        )
    if n_in.size:
        context = n_in + n_out
        i = int(np.argmax(context))
        if context[i] > MAX_CONTEXT_TOKENS:
            raise InputError(
                f"row {i} needs a context of {int(context[i])} tokens; the analytic model handles at most "
                f"{MAX_CONTEXT_TOKENS}"
            )
    return n_in, n_out
