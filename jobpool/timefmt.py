"""How jobpool writes a moment for people (CLI output, the dev view): whole seconds in
UTC, or ``-`` for none."""

from __future__ import annotations

from datetime import UTC, datetime


def when(moment: datetime | None) -> str:
    """``2025-01-31 12:00:00Z``, or ``-`` for no time."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
