"""jobpool: a durable, sharded job system for Kubernetes, backed by Postgres.

Submit jobs with ``Client`` (async) or ``SyncClient``; see README.md for the whole
picture.

Every handler module imports this package, and so does every worker process before its
first job: the public names are therefore loaded on first use (PEP 562), so that a
worker, which needs ``Registry`` but no client, does not pay for importing the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobpool import errors
from jobpool.errors import Permanent

if TYPE_CHECKING:
    from jobpool.client import Client, Item, SyncClient
    from jobpool.models import (
        CancelOutcome,
        DlqEntry,
        DlqPage,
        Duration,
        ErrorRecord,
        Job,
        JobState,
        JobStatus,
        Pool,
        Priority,
        Progress,
    )
    from jobpool.worker.registry import Context, Registry

_LAZY: dict[str, str] = {
    "CancelOutcome": "jobpool.models",
    "Client": "jobpool.client",
    "Context": "jobpool.worker.registry",
    "DlqEntry": "jobpool.models",
    "DlqPage": "jobpool.models",
    "Duration": "jobpool.models",
    "ErrorRecord": "jobpool.models",
    "Item": "jobpool.client",
    "Job": "jobpool.models",
    "JobState": "jobpool.models",
    "JobStatus": "jobpool.models",
    "Pool": "jobpool.models",
    "Priority": "jobpool.models",
    "Progress": "jobpool.models",
    "Registry": "jobpool.worker.registry",
    "SyncClient": "jobpool.client",
}
"""Public name → the module that defines it, imported when the name is first read."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CancelOutcome",
    "Client",
    "Context",
    "DlqEntry",
    "DlqPage",
    "Duration",
    "ErrorRecord",
    "Item",
    "Job",
    "JobState",
    "JobStatus",
    "Permanent",
    "Pool",
    "Priority",
    "Progress",
    "Registry",
    "SyncClient",
    "errors",
]
