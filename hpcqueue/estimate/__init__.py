"""Pre-execution estimates of a batch's energy and runtime: the analytic model of a transformer's work per
phase of inference (:mod:`hpcqueue.estimate.architecture`), its roofline cost on a hardware class
(:mod:`hpcqueue.estimate.analytic`), the factors calibrated on measured profiles and transferred to hardware
without one (:mod:`hpcqueue.estimate.calibration`), and the leave-one-hardware-out validation of that
transfer (:mod:`hpcqueue.estimate.holdout`). ``docs/estimate.md`` describes the method."""

from hpcqueue.estimate.analytic import (
    FACTOR_NAMES,
    MEMORY_HEADROOM,
    AnalyticModel,
    Estimate,
    Factors,
    build_model,
)
from hpcqueue.estimate.architecture import (
    KNOWN,
    Architecture,
    Work,
    architecture_of,
    from_config,
    read_config,
)
from hpcqueue.estimate.calibration import (
    PRIOR_FACTORS,
    Calibration,
    ClassFit,
    Intervals,
    analytic_model,
    calibrate,
)
from hpcqueue.estimate.holdout import (
    COVERAGE_TARGET,
    ENERGY_MAPE_TARGET,
    HeldOutClass,
    LeaveOneHardwareOut,
    leave_one_hardware_out,
)

__all__ = [
    "COVERAGE_TARGET",
    "ENERGY_MAPE_TARGET",
    "FACTOR_NAMES",
    "KNOWN",
    "MEMORY_HEADROOM",
    "PRIOR_FACTORS",
    "AnalyticModel",
    "Architecture",
    "Calibration",
    "ClassFit",
    "Estimate",
    "Factors",
    "HeldOutClass",
    "Intervals",
    "LeaveOneHardwareOut",
    "Work",
    "analytic_model",
    "architecture_of",
    "build_model",
    "calibrate",
    "from_config",
    "leave_one_hardware_out",
    "read_config",
]
