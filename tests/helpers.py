"""Helpers shared by the test suites."""

from __future__ import annotations

from standing.processes import free_port

__all__ = ["free_port"]
