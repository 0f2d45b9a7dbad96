"""hpcqueue: an energy-aware batch queue for LLM inference on Slurm clusters."""

__version__ = "0.1.0"
