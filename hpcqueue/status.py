"""The old home of the collect job's entry point, kept for jobs already in the queue.

submitit pickles what a job runs by its module path, and collect jobs submitted by hpcqueue 0.1 name
``hpcqueue.status.collect_job``; they must still run after an upgrade. New code uses
:func:`hpcqueue.ledger.collect.collect_job`.
"""

from __future__ import annotations

from hpcqueue.ledger.collect import collect_job

__all__ = ["collect_job"]
