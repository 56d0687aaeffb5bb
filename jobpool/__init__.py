"""jobpool: a durable, sharded job system for Kubernetes, backed by Postgres.

Submit jobs with ``Client`` (async) or ``SyncClient``; see README.md for the whole
picture.
"""

from jobpool import errors
from jobpool.client import Client, Item, SyncClient
from jobpool.errors import Permanent
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
