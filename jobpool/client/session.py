"""What the client's sub-APIs (the dead-letter queue) need of a client: its pool and
tenant, a connection for its own statements, and job validation.

A protocol, so that ``client.dlq`` depends on this small surface rather than on the
``Client`` class and its internals (``Client`` satisfies it; no import cycle).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg

from jobpool.client.validation import SubmitOptions
from jobpool.models import NewJob


class Session(Protocol):
    """A connected client of one pool and tenant."""

    @property
    def pool_name(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    def statements(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection for statements that leave no session state behind."""

    def build(
        self, job_type: str, payload: Any, options: SubmitOptions
    ) -> tuple[list[NewJob], bool]:
        """Validate a submit call into jobs; nothing is written."""
