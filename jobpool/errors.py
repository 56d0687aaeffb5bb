"""Typed errors of jobpool's public API.

Every error a caller can act on has its own class, so code can catch exactly what it
handles (`except jobpool.errors.JobNotFound`). Input errors are raised before anything
is written: a batch with one bad item inserts no item.
"""

from __future__ import annotations


class JobpoolError(Exception):
    """Base class of every error jobpool raises on purpose."""


class InvalidInput(JobpoolError, ValueError):
    """The caller passed something jobpool refuses; nothing was written."""


class InvalidJobType(InvalidInput):
    """A job type name is empty, too long or has characters outside ``[A-Za-z0-9_.:-]``."""


class UnknownPriority(InvalidInput):
    """A priority other than ``critical``, ``high``, ``normal`` or ``low``."""


class PayloadNotSerializable(InvalidInput):
    """A payload that cannot be encoded as JSON."""


class PayloadTooLarge(InvalidInput):
    """A payload whose JSON encoding exceeds the configured size limit."""


class BatchTooLarge(InvalidInput):
    """A batch with more items than the configured batch limit."""


class InvalidBatch(InvalidInput):
    """Several items of a batch are invalid: the message names each (index and what is
    wrong, the first 20), ``items`` holds every ``(index, error)``."""

    def __init__(self, message: str, *, items: list[tuple[int, InvalidInput]]) -> None:
        super().__init__(message)
        self.items = items


class InvalidSchedule(InvalidInput):
    """Both ``delay`` and ``run_at`` given, a negative delay, or a naive ``run_at``."""


class InvalidPeriodic(InvalidInput):
    """A periodic schedule jobpool refuses: its cron expression, time zone, name or
    payload, or a name already taken."""


class KeyedEnqueueIsolation(InvalidInput):
    """Jobs with a ``key`` enqueued in a REPEATABLE READ or SERIALIZABLE transaction: their
    order is decided against the key's latest jobs, which such a snapshot may not see."""


class InvalidDsn(InvalidInput):
    """A connection string the driver cannot parse (bad scheme, port, host or option)."""


class InvalidName(InvalidInput):
    """A pool or tenant name outside the allowed pattern."""


class AccessDenied(JobpoolError, PermissionError):
    """The database role may not do this: act for this tenant (it is mapped to other
    tenants, or to none) or run this statement (it lacks the jobpool group role)."""


class DevAlreadyRunning(JobpoolError):
    """Another ``jobpool dev`` session holds the data directory."""


class PoolNotFound(JobpoolError, LookupError):
    """The named pool has no row in the ``pools`` table (create it first)."""


class JobNotFound(JobpoolError, LookupError):
    """No job with this id exists in this pool for this tenant."""


class JobHistoryDropped(JobNotFound):
    """The job is not in its pool's history, and any job created when its id says ended
    before the pool's retention dropped that part of the history."""


class JobAlreadyFinished(JobpoolError):
    """The job already ended (succeeded, cancelled or dead) and cannot be changed."""


class JobFailed(JobpoolError):
    """The awaited job ended in the dead-letter queue."""


class JobCancelled(JobpoolError):
    """The awaited job was cancelled."""


class JobWaitTimeout(JobpoolError, TimeoutError):
    """The awaited job did not end within the timeout given to ``result()``."""


class DlqEntryNotFound(JobpoolError, LookupError):
    """No dead-letter entry with this id exists in this pool for this tenant."""


class DlqEntryAlreadyReplayed(JobpoolError):
    """The dead-letter entry was already replayed."""


class MigrationError(JobpoolError):
    """The database schema cannot be brought up to date safely."""


class MigrationChanged(MigrationError):
    """An already applied migration file was edited after it ran."""


class MigrationRolesMissing(MigrationError):
    """The security model's group roles are missing and the migrating role may not
    create them, or it is not a member of ``jobpool_owner``: an administrator must."""


class DatabaseUnavailable(JobpoolError, ConnectionError):
    """The database could not be reached or refused the connection."""


class Permanent(JobpoolError):
    """Raised by a handler to fail its job for good: no retry, straight to the DLQ."""


class HandlerMissing(JobpoolError):
    """A claimed job's type has no handler in the worker's registry (terminal)."""


class InvalidHandler(JobpoolError, TypeError):
    """A handler registration the worker cannot run (bad name, signature or options)."""
