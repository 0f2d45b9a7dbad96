"""Fixtures that fake the machine's energy hardware (registered for every test by tests/conftest.py)."""

from __future__ import annotations
