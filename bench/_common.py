"""What the trace benchmarks share: the Azure LLM code trace shipped with the repository, and a command line
with ``--requests`` and ``--trace`` (a file with ``ContextTokens`` and ``GeneratedTokens`` columns).

The scripts run as ``python bench/NAME.py``, which puts this directory first on ``sys.path``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AZURE = REPO / "examples" / "traces" / "AzureLLMInferenceTrace_code.csv"  # CC BY 4.0, shipped


def trace_parser(doc: str | None, requests: int) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``--requests`` (default ``requests``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--requests", type=int, default=requests)
    return parser


def parse_with_trace(parser: argparse.ArgumentParser, what: str) -> argparse.Namespace:
    """Add ``--trace`` (``what``: its use, the start of its help) last, parse, and stop with a usage error
    when the trace is not a file."""
    parser.add_argument(
        "--trace",
        type=Path,
        default=AZURE,
        help=f"{what}, with ContextTokens and GeneratedTokens columns (default: the Azure code trace shipped "
        "in examples/traces/)",
    )
    args = parser.parse_args()
    if not args.trace.is_file():
        parser.error(f"{args.trace}: trace not found")
    return args
