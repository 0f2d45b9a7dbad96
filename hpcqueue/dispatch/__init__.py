"""Dispatch: from a planned batch to jobs, and where each task stands.

``batchdir`` is the batch-directory protocol shared with the workers; ``executor`` the one submitit helper
every job goes through; ``jobs`` turns a batch's tasks into job arrays and a collect job; ``slurm`` wraps
Slurm's own commands; ``status`` tells each task's state from the files and the jobs.

Nothing is imported here, so a worker that only needs the protocol does not load the rest.
"""
