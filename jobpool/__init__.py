"""jobpool: a durable, sharded job system for Kubernetes, backed by Postgres.

Submit jobs with ``Client`` (async) or ``SyncClient``; see README.md for the whole
picture.
"""

from jobpool import errors
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

__all__ = [
    "CancelOutcome",
    "Client",
    "DlqEntry",
    "DlqPage",
    "Duration",
    "ErrorRecord",
    "Item",
    "Job",
    "JobState",
    "JobStatus",
    "Pool",
    "Priority",
    "Progress",
    "SyncClient",
    "errors",
]
