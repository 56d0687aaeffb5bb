"""The worker runtime: handlers, shard ownership, scheduling, execution, metrics."""

from jobpool.worker.backoff import RetryPolicy
from jobpool.worker.registry import Context, Handler, Registry
from jobpool.worker.runtime import Worker
from jobpool.worker.settings import WorkerSettings

__all__ = ["Context", "Handler", "Registry", "RetryPolicy", "Worker", "WorkerSettings"]
