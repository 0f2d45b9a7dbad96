"""Hardware classes: what a target's nodes are, and their nominal power for energy estimates.

A hardware class names the kind of node a profile describes (``a100-40g``, ``m1-pro``...). The nominal
figures here feed the estimate meter when no energy counter can be read; a measuring meter ignores them.
They are vendor TDPs (thermal design power), i.e. sustained full-load power, so estimates built on them are
upper-end figures for busy CPUs. A target whose nodes differ sets ``nominal_power_w`` in the cluster config.

Sources:

- Intel Xeon Gold 6148: 150 W TDP, 20 cores / 40 threads per socket (Intel ARK, product 120489).
- AMD EPYC 7742: 225 W default TDP, 64 cores / 128 threads per socket (AMD EPYC 7002 series product page).
- NVIDIA A100 40GB SXM4: 400 W max TDP (NVIDIA A100 Tensor Core GPU datasheet; the PCIe card is 250 W).
- NVIDIA V100 16GB SXM2: 300 W max power (NVIDIA Tesla V100 datasheet; the PCIe card is 250 W).
- Apple M1 Pro: Apple publishes no TDP; its 10-core CPU package draws about 30 W under an all-core load
  (AnandTech, "Apple's M1 Pro, M1 Max SoCs Investigated", October 2021).
- ``cpu-generic``: 10 W per logical CPU, a deliberate round figure on the high side. Per logical CPU, a
  Xeon Gold 6148 is 3.75 W and an EPYC 7742 1.8 W, while desktop and laptop parts are 4-8 W (65 W / 8 threads,
  125 W / 16 threads, 45 W / 8 threads); 10 W also leaves room for uncore and memory. An unknown machine's
  estimate should err towards more energy, never less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from hpcqueue.errors import ConfigError


@dataclass(frozen=True)
class HardwareClass:
    """One kind of node. Powers are nominal (vendor TDP); ``None`` where no published figure exists.

    ``cpu_power_w`` is the package power of one CPU socket with ``cpu_logical_per_socket`` logical CPUs;
    ``cpu_power_w_per_cpu`` is used instead for classes defined per logical CPU (``cpu-generic``).
    ``gpu_power_w`` is per GPU; ``gpus``, ``cpu_sockets`` and ``memory_gb`` (host memory) are per node.
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

    def __post_init__(self) -> None:
        if self.cpu_power_w_per_cpu is None and (self.cpu_power_w is None or not self.cpu_logical_per_socket):
            raise ValueError(
                f"hardware class {self.name!r} needs cpu_power_w_per_cpu, or cpu_power_w with "
                "cpu_logical_per_socket"
            )

    @property
    def cpu_power_w_per_logical_cpu(self) -> float:
        """Nominal watts charged per busy logical CPU."""
        if self.cpu_power_w_per_cpu is not None:
            return self.cpu_power_w_per_cpu
        assert self.cpu_power_w is not None and self.cpu_logical_per_socket  # checked in __post_init__
        return self.cpu_power_w / self.cpu_logical_per_socket


@dataclass(frozen=True)
class _Sockets:
    """A node's CPU sockets: the nominal package watts and logical CPUs of one socket, and how many."""

    watts: float
    logical: int
    count: int = 1


@dataclass(frozen=True)
class _Gpus:
    """A node's GPUs: how many, and the nominal watts and memory (GB) of each (``None``: no figure)."""

    count: int
    watts: float | None = None
    memory_gb: float | None = None


_NO_GPUS = _Gpus(0)


def _per_logical_cpu(name: str, description: str, watts: float) -> HardwareClass:
    """A class charged ``watts`` per logical CPU, without GPUs."""
    return HardwareClass(
        name,
        description,
        cpu_power_w=None,
        cpu_power_w_per_cpu=watts,
        gpu_power_w=None,
        gpus=0,
        memory_gb=None,
    )


def _per_socket(name: str, description: str, cpu: _Sockets, gpus: _Gpus = _NO_GPUS) -> HardwareClass:
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
    )


HARDWARE_CLASSES: MappingProxyType[str, HardwareClass] = MappingProxyType(
    {
        hw.name: hw
        for hw in (
            _per_logical_cpu(
                "cpu-generic", "any CPU node; nominal 10 W per logical CPU of the job's CPU set", 10.0
            ),
            _per_socket(
                "m1-pro",
                "Apple M1 Pro (10-core CPU, 16-core integrated GPU); CPU package about 30 W",
                _Sockets(30.0, logical=10),
                _Gpus(1),
            ),
            _per_socket(
                "a100-40g",
                "8x NVIDIA A100 40GB SXM4 (400 W each), host 2x AMD EPYC 7742 (225 W each)",
                _Sockets(225.0, logical=128, count=2),
                _Gpus(8, watts=400.0, memory_gb=40.0),
            ),
            _per_socket(
                "v100-16g",
                "NVIDIA V100 16GB SXM2 (300 W each), host 2x Intel Xeon Gold 6148 (150 W each)",
                _Sockets(150.0, logical=40, count=2),
                _Gpus(2, watts=300.0, memory_gb=16.0),
            ),
            _per_socket(
                "xeon-6148",
                "2x Intel Xeon Gold 6148 (20 cores / 40 threads, 150 W per socket), no GPU",
                _Sockets(150.0, logical=40, count=2),
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
