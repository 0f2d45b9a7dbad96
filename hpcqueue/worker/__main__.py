"""``python -m hpcqueue.worker TASK_DIR...``: run task directories by hand, print the summaries."""

from hpcqueue.worker.runner import main

raise SystemExit(main())
