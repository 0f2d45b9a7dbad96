"""A stub of the ``pynvml`` module of nvidia-ml-py: the calls hpcqueue and pyJoules make, same units.

- ``nvmlDeviceGetTotalEnergyConsumption(handle)`` → int millijoules since driver load (Volta and newer;
  older GPUs raise ``NVMLError`` with ``NVML_ERROR_NOT_SUPPORTED``);
- ``nvmlDeviceGetPowerUsage(handle)`` → int milliwatts;
- ``nvmlDeviceGetUUID`` / ``nvmlDeviceGetName`` → str (nvidia-ml-py ≥ 11.5 decodes them);
- every device call before ``nvmlInit()`` raises ``NVML_ERROR_UNINITIALIZED``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"Unknown Error {self.value}")


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    energy_mj: int | None = 0  # None: no energy counter (pre-Volta)
    power_mw: int | Callable[[], int] = 60_000
    reads: list[str] = field(default_factory=list)  # which calls hit this device


class FakeNvml:
    """Use as the ``nvml=`` argument, or put it in ``sys.modules["pynvml"]``."""

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = False
        self.NVMLError = NVMLError
        for key, value in globals().items():
            if key.startswith("NVML_"):
                setattr(self, key, value)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def _check(self) -> None:
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._check()
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        self._check()
        return handle.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        self._check()
        handle.reads.append("energy")
        if handle.energy_mj is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        self._check()
        handle.reads.append("power")
        power = handle.power_mw
        return power() if callable(power) else power


def uuid(n: int) -> str:
    """A realistic GPU UUID, distinct per ``n``."""
    return f"GPU-{n:08x}-1c2d-3e4f-5a6b-7c8d9e0f{n:04x}"
