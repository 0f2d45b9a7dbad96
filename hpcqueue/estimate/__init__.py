"""Pre-execution estimates of a batch's energy and runtime: the analytic model of a transformer's work per
phase of inference (:mod:`hpcqueue.estimate.architecture`)."""

from hpcqueue.estimate.architecture import (
    KNOWN,
    Architecture,
    Work,
    architecture_of,
    from_config,
    read_config,
)

__all__ = ["KNOWN", "Architecture", "Work", "architecture_of", "from_config", "read_config"]
