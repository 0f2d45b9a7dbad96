"""The worker: what runs on the compute node. ``runner`` turns task directories into outputs and metrics,
``engine`` generates with transformers and ``vllm_engine`` with vLLM (a target's ``engine``), ``attribution``
splits the metered energy over the requests.

``TaskRunner`` is what every array element runs. submitit pickles it by this path
(``hpcqueue.worker.TaskRunner``), so jobs queued by any earlier version find it here.
"""

from __future__ import annotations

from hpcqueue.worker.runner import TaskRunner, main, run_task, run_tasks

__all__ = ["TaskRunner", "main", "run_task", "run_tasks"]
