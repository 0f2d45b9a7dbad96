"""Hardware classes: what a target's nodes are, their nominal power, and their spec-sheet figures.

A hardware class names the kind of node a profile describes (``a100-40g``, ``m1-pro``...). The nominal
figures here feed the estimate meter when no energy counter can be read; a measuring meter ignores them.
They are vendor TDPs (thermal design power), i.e. sustained full-load power, so estimates built on them are
upper-end figures for busy CPUs. A target whose nodes differ sets ``nominal_power_w`` in the cluster config.

The same table holds the figures of an analytic (roofline) estimate of runtime and energy:
``HardwareClass.compute_spec(dtype)`` gives, per device, the dense peak FLOP/s at that dtype, the memory
bandwidth and size, the power at full load and idle, and the link between devices for tensor parallelism.
The conventions behind those figures:

- Peak FLOP/s are the vendor's dense figures (tensor-core or matrix-core rates for 16- and 8-bit types),
  never the 2:4-sparsity figures, which are twice as high. ``float32`` on NVIDIA GPUs is the CUDA-core
  FP32 rate: PyTorch runs float32 matmuls without TF32 tensor cores unless asked to.
- A dtype a device has no arithmetic for, but which PyTorch still runs (bfloat16 on a V100, converted to
  float32 and computed without tensor cores), is recorded at the rate it runs at, marked not native. A dtype
  a device cannot run at all (float8 before Ada, Hopper and CDNA 3) is absent and asking for it is an error.
- Bandwidths are decimal bytes per second (1 TB/s = 1e12 B/s). Device memory is sold in binary units: an
  "80 GB" H100 holds 80 GiB, so ``memory_bytes`` is GB × 2**30.
- Link bandwidth is per device and per direction, the figure that bounds a ring all-reduce. Vendors quote
  both directions added: an H100's "900 GB/s NVLink" is 450 GB/s each way. ``None`` means no fast link:
  tensor parallelism would go over PCIe.
- Idle power is on no datasheet. The figures are typical readings of an idle device with its driver loaded
  (nvidia-smi between jobs) or, where no reading is published, estimates; each class's ``sources`` says
  which.
- CPU peaks are cores × base clock × FLOPs per cycle of the vector units. Sustained all-core vector clocks are
  lower than the base clock on many parts, so these are upper bounds. CPUs without float16/bfloat16
  arithmetic run those types at the float32 rate at best (converted to float32), so they are recorded at
  that rate and marked not native. A CPU's idle power is ``CPU_IDLE_SHARE`` of its nominal power.

Sources:

- Intel Xeon Gold 6148: 150 W TDP, 20 cores / 40 threads per socket, 2.4 GHz base, two AVX-512 FMA units per
  core (64 float32 FLOPs per cycle), 6 channels of DDR4-2666 (Intel ARK, product 120489).
- AMD EPYC 7742: 225 W default TDP, 64 cores / 128 threads per socket (AMD EPYC 7002 series product page).
- NVIDIA A100 40GB SXM4: 400 W max TDP (NVIDIA A100 Tensor Core GPU datasheet; the PCIe card is 250 W).
  Same datasheet: FP32 19.5 TFLOPS, BF16/FP16 tensor 312 TFLOPS dense (624 with sparsity), 1,555 GB/s (40GB)
  and 2,039 GB/s (80GB SXM), NVLink 600 GB/s; DGX A100 datasheet: 8 GPUs, 2x AMD EPYC 7742.
- NVIDIA V100 16GB SXM2: 300 W max power (NVIDIA Tesla V100 datasheet; the PCIe card is 250 W). Same
  datasheet: FP32 15.7 TFLOPS, tensor 125 TFLOPS (float16 only), 900 GB/s, NVLink 300 GB/s, 16 or 32 GB;
  DGX-1 datasheet: 8 V100 with 2x Intel Xeon E5-2698 v4 (Intel ARK: 20 cores / 40 threads, 135 W).
- NVIDIA A40 datasheet: FP32 37.4 TFLOPS, BF16/FP16 tensor 149.7 TFLOPS dense, 48 GB GDDR6 at 696 GB/s,
  300 W, NVLink bridge between two cards only. NVIDIA L40S datasheet: FP32 91.6 TFLOPS, BF16/FP16 362.05
  and FP8 733 TFLOPS dense, 48 GB GDDR6 at 864 GB/s, 350 W, no NVLink.
- NVIDIA H100 datasheet (SXM5): FP32 67 TFLOPS, BF16/FP16 1,979 and FP8 3,958 TFLOPS with sparsity (989.4
  and 1,978.9 dense, NVIDIA H100 architecture whitepaper), 80 GB, 3.35 TB/s, up to 700 W, NVLink 900 GB/s;
  DGX H100 datasheet: 8 GPUs, 2x Intel Xeon Platinum 8480C (Intel ARK, 8480+: 56 cores / 112 threads,
  350 W). NVIDIA H200 datasheet (SXM): the H100's compute with 141 GB at 4.8 TB/s, up to 700 W.
- NVIDIA HGX B200 / DGX B200 datasheets, for 8 GPUs: FP16/BF16 36 PFLOPS and FP8 72 PFLOPS with sparsity,
  FP32 600 TFLOPS, 1,440 GB at 64 TB/s, NVLink 5 at 1.8 TB/s per GPU, up to 1,000 W per GPU; 2x Intel Xeon
  Platinum 8570 (Intel ARK: 56 cores / 112 threads, 350 W).
- AMD Instinct MI250X datasheet: two GCDs per OAM package, FP16/BF16 383 TFLOPS, FP32 matrix 95.7 TFLOPS,
  128 GB HBM2e at 3.2 TB/s, 560 W; OLCF Frontier user guide: 4 MI250X (8 GCDs) and one 64-core EPYC 7A53 per
  node, 50 GB/s per direction per Infinity Fabric link between GCDs of different packages.
- AMD Instinct MI300X datasheet: FP16/BF16 1,307.4 and FP8 2,614.9 TFLOPS dense, FP32 163.4 TFLOPS, 192 GB
  HBM3 at 5.3 TB/s, 750 W, 7 Infinity Fabric links of 128 GB/s each (both directions).
- Apple M1 Pro: Apple publishes no TDP; its 10-core CPU package draws about 30 W under an all-core load
  (AnandTech, "Apple's M1 Pro, M1 Max SoCs Investigated", October 2021; the same article: about 200 mW of
  package power at idle).
- Apple M-series GPUs: unified memory and bandwidth from Apple's announcements ("Introducing M1 Pro and M1
  Max", October 2021; "Apple unveils M2 Pro and M2 Max", January 2023; "Apple unveils M3, M3 Pro, and M3 Max",
  October 2023). FP32 rate = GPU cores × 128 ALUs × 2 × clock (AnandTech: 5.2 / 10.4 TFLOPS for
  M1 Pro / Max; 1.398 GHz for M2 and M3, TechPowerUp GPU database). Apple's GPUs issue float16 at the float32
  rate (P. Turner, metal-benchmarks). Apple publishes no GPU power: the figures are review measurements or
  estimates scaled from them, each labelled in the class's ``sources``.
- ``cpu-generic``: 10 W per logical CPU, a deliberate round figure on the high side. Per logical CPU, a
  Xeon Gold 6148 is 3.75 W and an EPYC 7742 1.8 W, while desktop and laptop parts are 4-8 W (65 W / 8 threads,
  125 W / 16 threads, 45 W / 8 threads); 10 W also leaves room for uncore and memory. An unknown machine's
  estimate should err towards more energy, never less. Its roofline figures are those of a modest x86 core
  shared by two logical CPUs: AVX2 with two FMA units (32 float32 FLOPs per cycle) at 2.5 GHz, 40 GFLOP/s per
  logical CPU; 3.2 GB/s of memory bandwidth per logical CPU (two channels of DDR4-3200 for 16 logical CPUs,
  or a Xeon Gold 6148 socket's six channels of DDR4-2666 for its 40).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal, NoReturn

from hpcqueue.errors import ConfigError

RooflineDtype = Literal["float32", "float16", "bfloat16", "float8"]
ROOFLINE_DTYPES: tuple[RooflineDtype, ...] = ("float32", "float16", "bfloat16", "float8")

CPU_IDLE_SHARE = 0.25
"""Idle power of a CPU set as a share of its nominal power. An estimate: SPECpower_ssj2008 results of
two-socket servers put active idle at 15-30 % of full-load power, uncore and memory included."""

DEFAULT_GENERIC_CPUS = 8
"""The CPU set ``compute_spec`` assumes for a class defined per logical CPU when the job's is not given."""

_GIB = 2**30


@dataclass(frozen=True)
class PeakRate:
    """The dense peak throughput, in FLOP/s, of one device (or one logical CPU) at one dtype.

    ``native`` is False where the device has no arithmetic for the dtype and the rate is that of a fallback
    (bfloat16 on a V100 runs converted to float32); ``note`` says what the rate is.
    """

    dtype: RooflineDtype
    flops: float
    native: bool = True
    note: str | None = None


@dataclass(frozen=True)
class ComputeSpec:
    """What runs the model on a node of a class, at one dtype: the roofline's figures per device.

    For kind ``"gpu"`` a device is one GPU (an Apple SoC's integrated GPU; one GCD of an MI250X) and
    ``devices`` is the GPUs per node. For kind ``"cpu"`` the job's CPU set is the one device: its peak FLOP/s,
    memory bandwidth and power are the node's, scaled by the job's share of the node's logical CPUs.
    ``link_bandwidth_bps`` is per device and per direction (half the "total" figure vendors quote).
    ``memory_bytes`` is the memory one device can hold weights in: GPU memory, unified memory, or the node's
    host memory for kind ``"cpu"`` (not scaled by the job's share; ``None`` where the class does not say).
    """

    hardware: str
    kind: Literal["gpu", "cpu"]
    dtype: str
    devices: int
    peak_flops: float
    memory_bandwidth_bps: float
    memory_bytes: float | None
    power_max_w: float
    power_idle_w: float
    link_bandwidth_bps: float | None
    native_dtype: bool
    notes: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class HardwareClass:
    """One kind of node. Powers are nominal (vendor TDP); ``None`` where no published figure exists.

    ``cpu_power_w`` is the package power of one CPU socket with ``cpu_logical_per_socket`` logical CPUs;
    ``cpu_power_w_per_cpu`` is used instead for classes defined per logical CPU (``cpu-generic``).
    ``gpu_power_w`` is per GPU; ``gpus``, ``cpu_sockets`` and ``memory_gb`` (host memory) are per node.

    Roofline figures: ``gpu_peak_flops``, ``gpu_memory_bandwidth_bps``, ``gpu_idle_power_w`` and
    ``gpu_link_bandwidth_bps`` (per direction) are per GPU, like ``gpu_power_w`` and ``gpu_memory_gb`` (for
    an Apple SoC: its unified memory). ``cpu_peak_flops_per_cpu`` and ``cpu_memory_bandwidth_bps_per_cpu``
    are per logical CPU: a socket's figures divided by its logical CPUs, so that a job's CPU set gets its
    share of the node. ``notes`` and ``sources`` go into every ``ComputeSpec`` of the class.
    """

    name: str
    description: str
    cpu_power_w: float | None
    cpu_power_w_per_cpu: float | None
    gpu_power_w: float | None
    gpus: int
    memory_gb: float | None
    gpu_memory_gb: float | None = None
    cpu_sockets: int = 1
    cpu_logical_per_socket: int | None = None
    gpu_peak_flops: tuple[PeakRate, ...] = ()
    gpu_memory_bandwidth_bps: float | None = None
    gpu_idle_power_w: float | None = None
    gpu_link_bandwidth_bps: float | None = None
    cpu_peak_flops_per_cpu: tuple[PeakRate, ...] = ()
    cpu_memory_bandwidth_bps_per_cpu: float | None = None
    cpu_idle_share: float = CPU_IDLE_SHARE
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cpu_power_w_per_cpu is None and (self.cpu_power_w is None or not self.cpu_logical_per_socket):
            raise ValueError(
                f"hardware class {self.name!r} needs cpu_power_w_per_cpu, or cpu_power_w with "
                "cpu_logical_per_socket"
            )
        for rates in (self.gpu_peak_flops, self.cpu_peak_flops_per_cpu):
            dtypes = [rate.dtype for rate in rates]
            if len(set(dtypes)) != len(dtypes) or not set(dtypes) <= set(ROOFLINE_DTYPES):
                raise ValueError(f"hardware class {self.name!r}: dtypes {dtypes} repeat or are unknown")
            if any(not (math.isfinite(rate.flops) and rate.flops > 0) for rate in rates):
                raise ValueError(f"hardware class {self.name!r}: a peak FLOP/s figure is not positive")
        for figure in (
            self.gpu_memory_bandwidth_bps,
            self.gpu_idle_power_w,
            self.gpu_link_bandwidth_bps,
            self.cpu_memory_bandwidth_bps_per_cpu,
        ):
            if figure is not None and not (math.isfinite(figure) and figure > 0):
                raise ValueError(f"hardware class {self.name!r}: figure {figure!r} is not positive")
        if not 0 <= self.cpu_idle_share <= 1:
            raise ValueError(f"hardware class {self.name!r}: cpu_idle_share must be within [0, 1]")

    @property
    def cpu_power_w_per_logical_cpu(self) -> float:
        """Nominal watts charged per busy logical CPU."""
        if self.cpu_power_w_per_cpu is not None:
            return self.cpu_power_w_per_cpu
        assert self.cpu_power_w is not None and self.cpu_logical_per_socket  # checked in __post_init__
        return self.cpu_power_w / self.cpu_logical_per_socket

    @property
    def logical_cpus(self) -> int | None:
        """Logical CPUs per node; ``None`` for a class defined per logical CPU."""
        if self.cpu_power_w_per_cpu is not None or not self.cpu_logical_per_socket:
            return None
        return self.cpu_sockets * self.cpu_logical_per_socket

    def compute_spec(self, dtype: str, *, cpus: int | None = None) -> ComputeSpec:
        """The roofline's figures for running a model at ``dtype`` on a node of this class.

        A class with GPUs runs the model on its GPUs (kind ``"gpu"``; ``cpus`` is then only checked). A
        class without runs it on the job's CPU set (kind ``"cpu"``) of ``cpus`` logical CPUs, by default the
        whole node, or ``DEFAULT_GENERIC_CPUS`` for a class defined per logical CPU. The CPU set gets
        ``cpus / logical CPUs of the node`` of the node's peak FLOP/s, memory bandwidth and nominal power, so
        bandwidth grows with ``cpus`` up to the node's total; it cannot span more than one node. Its idle
        power is ``cpu_idle_share`` of its nominal power.

        Raises ConfigError for a dtype the device cannot run (listing the ones it can), for more CPUs than
        a node has, and for a class that lacks a figure the roofline needs (naming it).
        """
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
            raise ConfigError(f"cpus must be a positive integer, not {cpus!r}")
        if self.gpus:
            return self._gpu_spec(dtype)
        return self._cpu_spec(dtype, cpus)

    def _gpu_spec(self, dtype: str) -> ComputeSpec:
        rate = self._rate(self.gpu_peak_flops, dtype, "GPUs", "gpu_peak_flops")
        return ComputeSpec(
            hardware=self.name,
            kind="gpu",
            dtype=dtype,
            devices=self.gpus,
            peak_flops=rate.flops,
            memory_bandwidth_bps=self._figure(
                self.gpu_memory_bandwidth_bps, "gpu_memory_bandwidth_bps", "memory bandwidth of its GPUs"
            ),
            memory_bytes=None if self.gpu_memory_gb is None else self.gpu_memory_gb * _GIB,
            power_max_w=self._figure(self.gpu_power_w, "gpu_power_w", "full-load power of its GPUs"),
            power_idle_w=self._figure(self.gpu_idle_power_w, "gpu_idle_power_w", "idle power of its GPUs"),
            link_bandwidth_bps=self.gpu_link_bandwidth_bps,
            native_dtype=rate.native,
            notes=(*([rate.note] if rate.note else []), *self.notes),
            sources=self.sources,
        )

    def _cpu_spec(self, dtype: str, cpus: int | None) -> ComputeSpec:
        node = self.logical_cpus
        if cpus is None:
            cpus = node if node is not None else DEFAULT_GENERIC_CPUS
        elif node is not None and cpus > node:
            raise ConfigError(
                f"hardware class {self.name!r} has {node} logical CPUs per node, so a job's CPU set cannot "
                f"have {cpus}; ask for at most {node} cpus"
            )
        rate = self._rate(self.cpu_peak_flops_per_cpu, dtype, "CPUs", "cpu_peak_flops_per_cpu")
        bandwidth = self._figure(
            self.cpu_memory_bandwidth_bps_per_cpu,
            "cpu_memory_bandwidth_bps_per_cpu",
            "memory bandwidth of its CPUs",
        )
        power_w = self.cpu_power_w_per_logical_cpu * cpus
        share = (
            f"{cpus} of the node's {node} logical CPUs: that share of its peak FLOP/s, memory bandwidth "
            "and nominal power"
            if node is not None
            else f"{cpus} logical CPUs at the class's figures per logical CPU"
        )
        return ComputeSpec(
            hardware=self.name,
            kind="cpu",
            dtype=dtype,
            devices=1,
            peak_flops=rate.flops * cpus,
            memory_bandwidth_bps=bandwidth * cpus,
            memory_bytes=None if self.memory_gb is None else self.memory_gb * _GIB,
            power_max_w=power_w,
            power_idle_w=power_w * self.cpu_idle_share,
            link_bandwidth_bps=None,
            native_dtype=rate.native,
            notes=(share, *([rate.note] if rate.note else []), *self.notes),
            sources=self.sources,
        )

    def _rate(self, rates: tuple[PeakRate, ...], dtype: str, devices: str, field: str) -> PeakRate:
        if not rates:
            self._missing(field, f"peak FLOP/s of its {devices}")
        for rate in rates:
            if rate.dtype == dtype:
                return rate
        supported = ", ".join(rate.dtype for rate in rates)
        unknown = "" if dtype in ROOFLINE_DTYPES else f" ({dtype!r} is none of {', '.join(ROOFLINE_DTYPES)})"
        raise ConfigError(
            f"hardware class {self.name!r} cannot run dtype {dtype!r} on its {devices}{unknown}; "
            f"supported dtypes: {supported}"
        )

    def _figure(self, value: float | None, field: str, what: str) -> float:
        if value is None:
            self._missing(field, what)
        return value

    def _missing(self, field: str, what: str) -> NoReturn:
        raise ConfigError(
            f"hardware class {self.name!r} has no figure for the {what} ({field} in "
            "hpcqueue/meters/hardware.py), which the roofline estimate needs; measure a profile of the "
            "target instead, or add the figure with its source"
        )


@dataclass(frozen=True)
class _Sockets:
    """A node's CPU sockets: the nominal package watts and logical CPUs of one socket, and how many.

    ``rates`` and ``bandwidth_bps`` (the roofline's peak FLOP/s and memory bandwidth) are per socket too.
    """

    watts: float
    logical: int
    count: int = 1
    rates: tuple[PeakRate, ...] = ()
    bandwidth_bps: float | None = None


@dataclass(frozen=True)
class _Gpus:
    """A node's GPUs: how many, and the figures of each (``None``: no figure).

    ``watts`` is the TDP, ``memory_gb`` the memory, ``idle_w`` the idle power, ``bandwidth_bps`` the memory
    bandwidth and ``link_bps`` the link to the other GPUs (per direction) of one GPU.
    """

    count: int
    watts: float | None = None
    memory_gb: float | None = None
    idle_w: float | None = None
    bandwidth_bps: float | None = None
    link_bps: float | None = None
    rates: tuple[PeakRate, ...] = ()


_NO_GPUS = _Gpus(0)


def _per_logical_cpu(
    name: str,
    description: str,
    watts: float,
    *,
    rates: tuple[PeakRate, ...] = (),
    bandwidth_bps: float | None = None,
    sources: tuple[str, ...] = (),
) -> HardwareClass:
    """A class charged ``watts`` per logical CPU, without GPUs; ``rates`` and ``bandwidth_bps`` are per
    logical CPU too."""
    return HardwareClass(
        name,
        description,
        cpu_power_w=None,
        cpu_power_w_per_cpu=watts,
        gpu_power_w=None,
        gpus=0,
        memory_gb=None,
        cpu_peak_flops_per_cpu=rates,
        cpu_memory_bandwidth_bps_per_cpu=bandwidth_bps,
        sources=sources,
    )


def _per_socket(
    name: str,
    description: str,
    cpu: _Sockets,
    gpus: _Gpus = _NO_GPUS,
    *,
    notes: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
) -> HardwareClass:
    """A class whose CPU power is its vendor's TDP per socket."""
    return HardwareClass(
        name,
        description,
        cpu_power_w=cpu.watts,
        cpu_power_w_per_cpu=None,
        gpu_power_w=gpus.watts,
        gpus=gpus.count,
        memory_gb=None,
        gpu_memory_gb=gpus.memory_gb,
        cpu_sockets=cpu.count,
        cpu_logical_per_socket=cpu.logical,
        gpu_peak_flops=gpus.rates,
        gpu_memory_bandwidth_bps=gpus.bandwidth_bps,
        gpu_idle_power_w=gpus.idle_w,
        gpu_link_bandwidth_bps=gpus.link_bps,
        cpu_peak_flops_per_cpu=tuple(replace(rate, flops=rate.flops / cpu.logical) for rate in cpu.rates),
        cpu_memory_bandwidth_bps_per_cpu=None
        if cpu.bandwidth_bps is None
        else cpu.bandwidth_bps / cpu.logical,
        notes=notes,
        sources=sources,
    )


def _rates(
    float32: float, float16: float, bfloat16: float | PeakRate, float8: float | None = None
) -> tuple[PeakRate, ...]:
    """The native rates of a device, with ``bfloat16`` given as a PeakRate where it is a fallback."""
    bf16 = bfloat16 if isinstance(bfloat16, PeakRate) else PeakRate("bfloat16", bfloat16)
    rates = [PeakRate("float32", float32), PeakRate("float16", float16), bf16]
    if float8 is not None:
        rates.append(PeakRate("float8", float8))
    return tuple(rates)


def _cpu_rates(float32: float) -> tuple[PeakRate, ...]:
    """A CPU without float16/bfloat16 arithmetic: both run converted to float32, at that rate at best."""
    note = (
        "{} has no arithmetic on this CPU: converted to float32, at the float32 rate at best (often slower)"
    )
    return (
        PeakRate("float32", float32),
        PeakRate("float16", float32, native=False, note=note.format("float16")),
        PeakRate("bfloat16", float32, native=False, note=note.format("bfloat16")),
    )


def _nvidia_rates(
    float32: float, tensor16: float, float8: float | None = None, *, no_bfloat16_on: str | None = None
) -> tuple[PeakRate, ...]:
    """An NVIDIA GPU's rates: CUDA-core float32, dense tensor-core float16/bfloat16 (and float8).

    ``no_bfloat16_on`` names a GPU whose tensor cores lack bfloat16: it runs bfloat16 at the float32 rate.
    """
    f32 = PeakRate(
        "float32",
        float32,
        note="float32 at the CUDA-core rate; TF32 tensor cores (off by default in PyTorch) are faster",
    )
    bf16 = (
        PeakRate("bfloat16", tensor16)
        if no_bfloat16_on is None
        else PeakRate(
            "bfloat16",
            float32,
            native=False,
            note=f"bfloat16 has no tensor-core support on the {no_bfloat16_on}: PyTorch runs it without "
            "tensor cores, at about the float32 rate",
        )
    )
    return (
        f32,
        PeakRate("float16", tensor16),
        bf16,
        *(() if float8 is None else (PeakRate("float8", float8),)),
    )


def _apple_rates(float32: float) -> tuple[PeakRate, ...]:
    """An Apple GPU: float16 at the float32 rate; bfloat16 without native arithmetic."""
    return _rates(
        float32,
        float32,
        PeakRate(
            "bfloat16",
            float32,
            native=False,
            note="bfloat16 is not native on Apple GPUs (PyTorch MPS runs it from macOS 14): "
            "taken at the float32 rate, an upper bound",
        ),
    )


def _apple(
    name: str,
    chip: str,
    cpu: _Sockets,
    *,
    gpu_cores: int,
    float32: float,
    gpu_w: float,
    memory_gb: float,
    bandwidth_bps: float,
    sources: tuple[str, ...],
) -> HardwareClass:
    """An Apple SoC: the GPU is the one device, with the unified memory of the largest configuration."""
    return _per_socket(
        name,
        f"Apple {chip} ({cpu.logical}-core CPU about {cpu.watts:g} W, {gpu_cores}-core integrated GPU "
        f"about {gpu_w:g} W, {memory_gb:g} GB unified memory)",
        cpu,
        _Gpus(
            1,
            watts=gpu_w,
            memory_gb=memory_gb,
            idle_w=_APPLE_IDLE_W,
            bandwidth_bps=bandwidth_bps,
            rates=_apple_rates(float32),
        ),
        notes=(
            f"memory is the unified memory of the largest {chip} configuration ({memory_gb:g} GB), "
            "shared with the CPU",
            "GPU power is a review measurement or an estimate: Apple publishes none",
        ),
        sources=sources,
    )


_CPU_IDLE = "idle: CPU_IDLE_SHARE (25 %) of nominal power, an estimate from SPECpower_ssj2008 results"
_APPLE_IDLE_W = 0.2
_APPLE_IDLE = "idle 0.2 W: AnandTech, M1 Max package power idling (about 200 mW), assumed for the GPU"
_V100 = _nvidia_rates(15.7e12, 125e12, no_bfloat16_on="V100")
_A100 = _nvidia_rates(19.5e12, 312e12)
_HOPPER = _nvidia_rates(67e12, 989.4e12, 1978.9e12)
_DGX_A100_HOST = _Sockets(225.0, logical=128, count=2)
_DGX_H_HOST = _Sockets(350.0, logical=112, count=2)
_V100_SOURCES = (
    "NVIDIA Tesla V100 datasheet (SXM2): FP32 15.7 TFLOPS, tensor 125 TFLOPS (float16), 900 GB/s, 300 W, "
    "NVLink 300 GB/s (both directions)",
    "bfloat16: Volta tensor cores have no bfloat16 mode (NVIDIA Volta architecture whitepaper)",
    "idle 40 W: typical nvidia-smi reading of an idle V100 SXM2 (about 40-45 W), not a vendor figure",
)
_A100_SOURCES = (
    "NVIDIA A100 Tensor Core GPU datasheet (SXM4): FP32 19.5 TFLOPS, BF16/FP16 312 TFLOPS dense (624 with "
    "sparsity), 400 W, NVLink 600 GB/s (both directions); no FP8",
    "NVIDIA DGX A100 datasheet: 8 GPUs, 2x AMD EPYC 7742 (225 W, 64 cores / 128 threads each)",
)
_HOPPER_SOURCES = (
    "NVIDIA H100/H200 datasheets (SXM): FP32 67 TFLOPS, BF16/FP16 1,979 and FP8 3,958 TFLOPS with sparsity; "
    "dense 989.4 / 1,978.9 (NVIDIA H100 architecture whitepaper); up to 700 W; NVLink 900 GB/s (both "
    "directions)",
    "NVIDIA DGX H100 / DGX H200 datasheets: 8 GPUs, 2x Intel Xeon Platinum 8480C; Intel ARK, Xeon Platinum "
    "8480+: 56 cores / 112 threads, 350 W",
)

HARDWARE_CLASSES: MappingProxyType[str, HardwareClass] = MappingProxyType(
    {
        hw.name: hw
        for hw in (
            _per_logical_cpu(
                "cpu-generic",
                "any CPU node; nominal 10 W per logical CPU of the job's CPU set",
                10.0,
                rates=_cpu_rates(40e9),
                bandwidth_bps=3.2e9,
                sources=(
                    "10 W per logical CPU: a round figure above Xeon, EPYC, desktop and laptop TDPs per "
                    "logical CPU (module docstring)",
                    "40 GFLOP/s float32 per logical CPU: AVX2, two FMA units (32 FLOPs/cycle) at 2.5 GHz, "
                    "two logical CPUs per core; an assumption on the low side",
                    "3.2 GB/s per logical CPU: 2 channels of DDR4-3200 (51.2 GB/s) for 16 logical CPUs, as "
                    "for a Xeon Gold 6148 socket (6 x DDR4-2666 for 40)",
                    _CPU_IDLE,
                ),
            ),
            _apple(
                "m1-pro",
                "M1 Pro",
                _Sockets(30.0, logical=10),
                gpu_cores=16,
                float32=5.2e12,
                gpu_w=20.0,
                memory_gb=32.0,
                bandwidth_bps=200e9,
                sources=(
                    "Apple, 'Introducing M1 Pro and M1 Max' (2021): 16-core GPU, 200 GB/s, up to 32 GB",
                    "FP32 5.2 TFLOPS: AnandTech, 'Apple Announces M1 Pro & M1 Max' (2021); float16 at the "
                    "float32 rate: P. Turner, metal-benchmarks",
                    "CPU about 30 W: AnandTech, 'Apple's M1 Pro, M1 Max SoCs Investigated' (2021)",
                    "GPU 20 W: estimate, half the M1 Max's measured ~40 W (half the GPU cores, same clock)",
                    _APPLE_IDLE,
                ),
            ),
            _apple(
                "m1-max",
                "M1 Max",
                _Sockets(30.0, logical=10),
                gpu_cores=32,
                float32=10.4e12,
                gpu_w=40.0,
                memory_gb=64.0,
                bandwidth_bps=400e9,
                sources=(
                    "Apple, 'Introducing M1 Pro and M1 Max' (2021): 32-core GPU, 400 GB/s, up to 64 GB",
                    "FP32 10.4 TFLOPS: AnandTech, 'Apple Announces M1 Pro & M1 Max' (2021); float16 at the "
                    "float32 rate: P. Turner, metal-benchmarks",
                    "CPU about 30 W (the M1 Pro's 10-core CPU) and GPU about 40 W in GPU-bound benchmarks: "
                    "measured, AnandTech, 'Apple's M1 Pro, M1 Max SoCs Investigated' (2021), approximate",
                    _APPLE_IDLE,
                ),
            ),
            _apple(
                "m2-pro",
                "M2 Pro",
                _Sockets(36.0, logical=12),
                gpu_cores=19,
                float32=6.8e12,
                gpu_w=25.0,
                memory_gb=32.0,
                bandwidth_bps=200e9,
                sources=(
                    "Apple, 'Apple unveils M2 Pro and M2 Max' (2023): 12-core CPU, 19-core GPU, 200 GB/s, "
                    "up to 32 GB",
                    "FP32 6.8 TFLOPS: 19 cores x 128 ALUs x 2 x 1.398 GHz (TechPowerUp GPU database)",
                    "CPU about 36 W: Notebookcheck, 'Apple M2 Pro and M2 Max analysis' (2023), approximate",
                    "GPU 25 W: estimate, about half the M2 Max's measured figure (half the GPU cores)",
                    _APPLE_IDLE,
                ),
            ),
            _apple(
                "m2-max",
                "M2 Max",
                _Sockets(36.0, logical=12),
                gpu_cores=38,
                float32=13.6e12,
                gpu_w=45.0,
                memory_gb=96.0,
                bandwidth_bps=400e9,
                sources=(
                    "Apple, 'Apple unveils M2 Pro and M2 Max' (2023): 12-core CPU, 38-core GPU, 400 GB/s, "
                    "up to 96 GB",
                    "FP32 13.6 TFLOPS: 38 cores x 128 ALUs x 2 x 1.398 GHz (TechPowerUp GPU database)",
                    "CPU about 36 W, GPU about 45 W: measured, Notebookcheck, 'Apple M2 Pro and M2 Max "
                    "analysis' (2023), approximate",
                    _APPLE_IDLE,
                ),
            ),
            _apple(
                "m3-pro",
                "M3 Pro",
                _Sockets(27.0, logical=12),
                gpu_cores=18,
                float32=6.44e12,
                gpu_w=27.0,
                memory_gb=36.0,
                bandwidth_bps=150e9,
                sources=(
                    "Apple, 'Apple unveils M3, M3 Pro, and M3 Max' (2023): 12-core CPU, 18-core GPU, "
                    "150 GB/s, up to 36 GB",
                    "FP32 6.44 TFLOPS: 18 cores x 128 ALUs x 2 x 1.398 GHz (TechPowerUp GPU database)",
                    "CPU about 27 W: Notebookcheck, 'Apple M3 Pro & M3 Max analysis' (2023), approximate",
                    "GPU 27 W: estimate, the M3 Max's measured figure scaled by GPU cores (18/40)",
                    _APPLE_IDLE,
                ),
            ),
            _apple(
                "m3-max",
                "M3 Max",
                _Sockets(56.0, logical=16),
                gpu_cores=40,
                float32=14.3e12,
                gpu_w=60.0,
                memory_gb=128.0,
                bandwidth_bps=400e9,
                sources=(
                    "Apple, 'Apple unveils M3, M3 Pro, and M3 Max' (2023): 16-core CPU, 40-core GPU, "
                    "400 GB/s, up to 128 GB",
                    "FP32 14.3 TFLOPS: 40 cores x 128 ALUs x 2 x 1.398 GHz (TechPowerUp GPU database)",
                    "CPU about 56 W, GPU up to about 60 W: measured, Notebookcheck, 'Apple M3 Pro & M3 Max "
                    "analysis' and MacBook Pro 16 M3 Max review (2023), approximate",
                    _APPLE_IDLE,
                ),
            ),
            _per_socket(
                "a100-40g",
                "8x NVIDIA A100 40GB SXM4 (400 W each), host 2x AMD EPYC 7742 (225 W each)",
                _DGX_A100_HOST,
                _Gpus(
                    8,
                    watts=400.0,
                    memory_gb=40.0,
                    idle_w=50.0,
                    bandwidth_bps=1555e9,
                    link_bps=300e9,
                    rates=_A100,
                ),
                sources=(
                    *_A100_SOURCES,
                    "A100 40GB SXM4: 1,555 GB/s (same datasheet)",
                    "idle 50 W: typical nvidia-smi reading of an idle A100 40GB SXM4 (about 50-55 W), "
                    "not a vendor figure",
                ),
            ),
            _per_socket(
                "a100-80g",
                "8x NVIDIA A100 80GB SXM4 (400 W each), host 2x AMD EPYC 7742 (225 W each)",
                _DGX_A100_HOST,
                _Gpus(
                    8,
                    watts=400.0,
                    memory_gb=80.0,
                    idle_w=60.0,
                    bandwidth_bps=2039e9,
                    link_bps=300e9,
                    rates=_A100,
                ),
                sources=(
                    *_A100_SOURCES,
                    "A100 80GB SXM4: 2,039 GB/s (same datasheet)",
                    "idle 60 W: typical nvidia-smi reading of an idle A100 80GB SXM4 (about 55-65 W), "
                    "not a vendor figure",
                ),
            ),
            _per_socket(
                "v100-16g",
                "NVIDIA V100 16GB SXM2 (300 W each), host 2x Intel Xeon Gold 6148 (150 W each)",
                _Sockets(150.0, logical=40, count=2),
                _Gpus(
                    2,
                    watts=300.0,
                    memory_gb=16.0,
                    idle_w=40.0,
                    bandwidth_bps=900e9,
                    link_bps=150e9,
                    rates=_V100,
                ),
                sources=_V100_SOURCES,
            ),
            _per_socket(
                "v100-32g",
                "8x NVIDIA V100 32GB SXM2 (300 W each), host 2x Intel Xeon E5-2698 v4 (135 W each), as DGX-1",
                _Sockets(135.0, logical=40, count=2),
                _Gpus(
                    8,
                    watts=300.0,
                    memory_gb=32.0,
                    idle_w=40.0,
                    bandwidth_bps=900e9,
                    link_bps=150e9,
                    rates=_V100,
                ),
                sources=(
                    *_V100_SOURCES,
                    "NVIDIA DGX-1 datasheet: 8 V100, 2x Intel Xeon E5-2698 v4; Intel ARK: 20 cores / 40 "
                    "threads, 135 W",
                ),
            ),
            _per_socket(
                "a40",
                "4x NVIDIA A40 48GB PCIe (300 W each), host 2x Intel Xeon Gold 6338 (205 W each)",
                _Sockets(205.0, logical=64, count=2),
                _Gpus(
                    4,
                    watts=300.0,
                    memory_gb=48.0,
                    idle_w=30.0,
                    bandwidth_bps=696e9,
                    rates=_nvidia_rates(37.4e12, 149.7e12),
                ),
                notes=(
                    "no link across the node: an NVLink bridge joins two A40s at most (56.25 GB/s each "
                    "way); otherwise PCIe Gen4 x16, 32 GB/s each way",
                ),
                sources=(
                    "NVIDIA A40 datasheet: FP32 37.4 TFLOPS, BF16/FP16 149.7 TFLOPS dense (299.4 with "
                    "sparsity), 48 GB GDDR6, 696 GB/s, 300 W, NVLink bridge 112.5 GB/s (both directions, "
                    "two cards); no FP8",
                    "host: Intel ARK, Xeon Gold 6338: 32 cores / 64 threads, 205 W (a typical 4-GPU "
                    "PCIe server CPU)",
                    "idle 30 W: estimate, typical nvidia-smi readings of idle A40s; no vendor figure",
                ),
            ),
            _per_socket(
                "l40s",
                "4x NVIDIA L40S 48GB PCIe (350 W each), host 2x AMD EPYC 9354 (280 W each)",
                _Sockets(280.0, logical=64, count=2),
                _Gpus(
                    4,
                    watts=350.0,
                    memory_gb=48.0,
                    idle_w=35.0,
                    bandwidth_bps=864e9,
                    rates=_nvidia_rates(91.6e12, 362.05e12, 733e12),
                ),
                notes=(
                    "no NVLink on the L40S: tensor parallelism goes over PCIe Gen4 x16, 32 GB/s each way",
                ),
                sources=(
                    "NVIDIA L40S datasheet: FP32 91.6 TFLOPS, BF16/FP16 362.05 and FP8 733 TFLOPS dense "
                    "(733 / 1,466 with sparsity), 48 GB GDDR6, 864 GB/s, 350 W, no NVLink",
                    "host: AMD EPYC 9354 product page: 32 cores / 64 threads, 280 W default TDP (a typical "
                    "4-GPU PCIe server CPU)",
                    "idle 35 W: estimate, typical nvidia-smi readings of idle L40S cards; no vendor figure",
                ),
            ),
            _per_socket(
                "h100-80g",
                "8x NVIDIA H100 80GB SXM5 (700 W each), host 2x Intel Xeon Platinum 8480C (350 W each), "
                "as DGX H100",
                _DGX_H_HOST,
                _Gpus(
                    8,
                    watts=700.0,
                    memory_gb=80.0,
                    idle_w=70.0,
                    bandwidth_bps=3.35e12,
                    link_bps=450e9,
                    rates=_HOPPER,
                ),
                sources=(
                    *_HOPPER_SOURCES,
                    "H100 SXM5: 80 GB HBM3, 3.35 TB/s (NVIDIA H100 datasheet)",
                    "idle 70 W: typical nvidia-smi reading of an idle H100 SXM (about 65-75 W), not a "
                    "vendor figure",
                ),
            ),
            _per_socket(
                "h200",
                "8x NVIDIA H200 141GB SXM (700 W each), host 2x Intel Xeon Platinum 8480C (350 W each), "
                "as DGX H200",
                _DGX_H_HOST,
                _Gpus(
                    8,
                    watts=700.0,
                    memory_gb=141.0,
                    idle_w=70.0,
                    bandwidth_bps=4.8e12,
                    link_bps=450e9,
                    rates=_HOPPER,
                ),
                sources=(
                    *_HOPPER_SOURCES,
                    "H200 SXM: 141 GB HBM3e, 4.8 TB/s (NVIDIA H200 datasheet)",
                    "idle 70 W: estimate, taken as the H100 SXM's (same GPU and TDP); no vendor figure",
                ),
            ),
            _per_socket(
                "b200",
                "8x NVIDIA B200 180GB (1000 W each), host 2x Intel Xeon Platinum 8570 (350 W each), "
                "as DGX B200",
                _Sockets(350.0, logical=112, count=2),
                _Gpus(
                    8,
                    watts=1000.0,
                    memory_gb=180.0,
                    idle_w=100.0,
                    bandwidth_bps=8e12,
                    link_bps=900e9,
                    rates=_nvidia_rates(75e12, 2.25e15, 4.5e15),
                ),
                sources=(
                    "NVIDIA HGX B200 / DGX B200 datasheets, 8 GPUs: FP16/BF16 36 PFLOPS and FP8 72 PFLOPS "
                    "with sparsity (per GPU dense: 2.25 / 4.5 PFLOPS), FP32 600 TFLOPS, 1,440 GB, 64 TB/s, "
                    "NVLink 5 1.8 TB/s per GPU (both directions), up to 1,000 W per GPU",
                    "host: DGX B200 datasheet, 2x Intel Xeon Platinum 8570; Intel ARK: 56 cores / 112 "
                    "threads, 350 W",
                    "idle 100 W: estimate, 10 % of TDP as for an idle H100 SXM; no vendor figure",
                ),
            ),
            _per_socket(
                "mi250x",
                "4x AMD Instinct MI250X (8 GCDs, 560 W per package), host 1x AMD EPYC 7A53 (64 cores), "
                "as an HPE Cray EX235a node (Frontier, LUMI-G)",
                _Sockets(280.0, logical=128),
                _Gpus(
                    8,
                    watts=280.0,
                    memory_gb=64.0,
                    idle_w=45.0,
                    bandwidth_bps=1.6384e12,
                    link_bps=50e9,
                    rates=(
                        PeakRate(
                            "float32",
                            47.85e12,
                            note="float32 at the matrix-core rate; vector float32 is half of it",
                        ),
                        *_rates(47.85e12, 191.5e12, 191.5e12)[1:],
                    ),
                ),
                notes=(
                    "a device is one GCD, half an MI250X package, as Slurm and PyTorch see it: 8 per node",
                    "link: 200 GB/s each way between the two GCDs of a package, 50-100 GB/s to GCDs of "
                    "other packages; the figure is the slowest link, which bounds a ring over all 8",
                ),
                sources=(
                    "AMD Instinct MI250X datasheet: per package FP16/BF16 383 TFLOPS, FP32 matrix 95.7 "
                    "TFLOPS, 128 GB HBM2e, 3.2 TB/s, 560 W, two GCDs; halved per GCD",
                    "OLCF Frontier user guide: 4 MI250X and one 64-core AMD EPYC 7A53 per node; Infinity "
                    "Fabric between GCDs 50 GB/s per link and direction",
                    "host 280 W: AMD publishes no TDP for the EPYC 7A53; taken from the EPYC 7763 (64 cores "
                    "/ 128 threads, 280 W, AMD product page), the same generation and core count",
                    "idle 45 W per GCD: estimate, about 90 W per idle package in rocm-smi readings; no "
                    "vendor figure",
                ),
            ),
            _per_socket(
                "mi300x",
                "8x AMD Instinct MI300X 192GB (750 W each), host 2x AMD EPYC 9654 (360 W each)",
                _Sockets(360.0, logical=192, count=2),
                _Gpus(
                    8,
                    watts=750.0,
                    memory_gb=192.0,
                    idle_w=140.0,
                    bandwidth_bps=5.3e12,
                    link_bps=448e9,
                    rates=(
                        *_rates(163.4e12, 1307.4e12, 1307.4e12),
                        PeakRate(
                            "float8",
                            2614.9e12,
                            note="float8 in the FNUZ variants (torch.float8_e4m3fnuz / float8_e5m2fnuz)",
                        ),
                    ),
                ),
                notes=("link: 7 Infinity Fabric links to the other 7 GPUs, 64 GB/s each way each",),
                sources=(
                    "AMD Instinct MI300X datasheet: FP16/BF16 1,307.4 and FP8 2,614.9 TFLOPS dense (twice "
                    "with sparsity), FP32 163.4 TFLOPS, 192 GB HBM3, 5.3 TB/s, 750 W, 7 Infinity Fabric "
                    "links of 128 GB/s (both directions)",
                    "host: AMD EPYC 9654 product page: 96 cores / 192 threads, 360 W default TDP (a "
                    "typical 8-GPU MI300X platform CPU)",
                    "idle 140 W: estimate from amd-smi readings of idle MI300X (about 130-150 W); no "
                    "vendor figure",
                ),
            ),
            _per_socket(
                "xeon-6148",
                "2x Intel Xeon Gold 6148 (20 cores / 40 threads, 150 W per socket), no GPU",
                _Sockets(150.0, logical=40, count=2, rates=_cpu_rates(3.072e12), bandwidth_bps=127.968e9),
                sources=(
                    "Intel ARK, Xeon Gold 6148 (product 120489): 20 cores / 40 threads, 2.4 GHz base, "
                    "150 W, two AVX-512 FMA units, 6 channels of DDR4-2666",
                    "float32 3.072 TFLOPS per socket: 20 cores x 2.4 GHz x 64 FLOPs/cycle (AVX-512 FMA); "
                    "sustained AVX-512 clocks are lower",
                    "127.968 GB/s per socket: 6 channels x 2,666 MT/s x 8 bytes",
                    "float16/bfloat16: no native arithmetic on Skylake-SP (AVX512_BF16 came with Cooper "
                    "Lake, AVX512_FP16 with Sapphire Rapids)",
                    _CPU_IDLE,
                ),
            ),
        )
    }
)


def get_hardware(name: str) -> HardwareClass:
    """Look up a hardware class by name; an unknown name is a ConfigError listing the known classes."""
    try:
        return HARDWARE_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(HARDWARE_CLASSES))
        raise ConfigError(
            f"unknown hardware class {name!r} (a target's 'hardware' in the cluster config); "
            f"known classes: {known}"
        ) from None


def nominal_cpu_power_w(name: str, cpus: int, override: float | None = None) -> float:
    """Nominal power, in watts, of ``cpus`` logical CPUs of hardware class ``name`` (the job's CPU set).

    This is the ``P`` of the estimate meter. ``override`` (a target's ``nominal_power_w``) wins when given:
    it is the nominal power of the job's whole CPU set, for nodes that the table does not describe.
    """
    hw = get_hardware(name)
    if override is not None:
        if (
            isinstance(override, bool)
            or not isinstance(override, (int, float))
            or not math.isfinite(override)
        ):
            raise ConfigError(f"nominal_power_w must be a number of watts, not {override!r}")
        if override <= 0:
            raise ConfigError(
                f"nominal_power_w must be > 0 watts, not {override!r} (target's nominal_power_w)"
            )
        return float(override)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"cpus must be a positive integer, not {cpus!r}")
    return hw.cpu_power_w_per_logical_cpu * cpus
