"""Handlers: what a worker runs for each job type.

``registry = Registry()`` and ``@registry.handler("send_email", payload=SendEmail)`` on
``async def send_email(payload: SendEmail, ctx: Context)``. The payload model validates
the job's JSON before the handler runs (an invalid payload is terminal); a handler
without ``payload=`` gets the plain JSON value. Sync functions run on the worker's
bounded pool of handler threads (see ``launcher``). The handler's return value (JSON)
becomes the job's result.

Periodic jobs: ``@registry.periodic("*/5 * * * *", payload={...}, timezone="Europe/Paris")``
above ``@registry.handler(...)`` enqueues a job of that handler's type at every tick
(``type=`` names another type). The worker that runs the pool's periodic service
declares these schedules in Postgres (see ``jobpool.worker.periodic``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from jobpool.cron import DEFAULT_TENANT, DEFAULT_TIMEZONE, Schedule
from jobpool.errors import HandlerMissing, InvalidHandler, InvalidPeriodic
from jobpool.models import Duration, JobId, Priority, check_job_type
from jobpool.worker.backoff import RetryPolicy

HandlerFn = Callable[[Any, "Context"], Any]
F = TypeVar("F", bound=HandlerFn)


class Context(Protocol):
    """What a handler knows about the attempt it runs, and how it reports progress."""

    job_id: JobId
    type: str
    attempt: int
    priority: Priority
    tenant: str
    request_id: str | None
    user_id: str | None

    @property
    def cancelled(self) -> bool:
        """True once the attempt ended without the handler (cancel request, timeout,
        shutdown, lost lease): a sync handler should stop. Safe to read from a thread."""

    def raise_if_cancelled(self) -> None:
        """Raise ``asyncio.CancelledError`` if ``cancelled``; else do nothing."""

    async def report_progress(self, fraction: float | None, message: str | None = None) -> None:
        """Record progress (0..1 and/or a message); ``client.progress()`` sees it at once."""


@dataclass(frozen=True)
class Handler:
    """A registered handler and its options."""

    name: str
    fn: HandlerFn
    payload_model: type[BaseModel] | None
    duration: Duration
    timeout_s: float | None
    retry: RetryPolicy | None
    max_attempts: int | None = None

    def policy(self, pool_policy: RetryPolicy) -> RetryPolicy:
        """The retry policy of this handler's jobs: its own, else the pool's, with its
        ``max_attempts`` on top (a job's own ``max_attempts`` still wins)."""
        policy = self.retry or pool_policy
        if self.max_attempts is not None:
            policy = policy.model_copy(update={"max_attempts": self.max_attempts})
        return policy

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def parse(self, payload: Any) -> Any:
        """The handler's argument: the validated model, or the plain JSON value."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)


class Registry:
    """Job type name -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._schedules: dict[str, Schedule] = {}

    def handler(
        self,
        name: str,
        *,
        payload: type[BaseModel] | None = None,
        duration: Duration | str = Duration.SHORT,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of job type ``name``."""
        check_job_type(name)
        if name in self._handlers:
            raise InvalidHandler(f"job type {name!r} already has a handler")
        if timeout is not None and timeout <= 0:
            raise InvalidHandler(f"timeout of {name!r} must be > 0 seconds")
        if max_attempts is not None and max_attempts < 1:
            raise InvalidHandler(f"max_attempts of {name!r} must be >= 1")

        def register(fn: F) -> F:
            self._handlers[name] = Handler(
                name=name,
                fn=fn,
                payload_model=payload,
                duration=Duration(duration),
                timeout_s=timeout,
                retry=retry,
                max_attempts=max_attempts,
            )
            return fn

        return register

    def periodic(
        self,
        cron: str,
        *,
        name: str | None = None,
        type: str | None = None,
        payload: Any = None,
        timezone: str = DEFAULT_TIMEZONE,
        priority: Priority | str = Priority.NORMAL,
        tenant: str = DEFAULT_TENANT,
        catch_up: bool = False,
    ) -> Callable[[F], F]:
        """Enqueue a job at every tick of ``cron`` (5 fields, or 6 with seconds first)
        read in ``timezone``: decorate a handler (above ``@registry.handler``), whose
        type the jobs get unless ``type`` names another. ``name`` (default: the type)
        must be unique in the registry; ``payload`` defaults to ``{}``. Missed ticks
        are skipped but the latest, unless ``catch_up``."""

        def register(fn: F) -> F:
            job_type = type or self._type_of(fn)
            schedule = Schedule.declare(
                name=name or job_type,
                cron=cron,
                type=job_type,
                payload={} if payload is None else payload,
                timezone=timezone,
                priority=priority,
                tenant=tenant,
                catch_up=catch_up,
            )
            if schedule.name in self._schedules:
                raise InvalidPeriodic(f"schedule {schedule.name!r} is already declared")
            self._schedules[schedule.name] = schedule
            return fn

        return register

    def _type_of(self, fn: HandlerFn) -> str:
        for handler in self._handlers.values():
            if handler.fn is fn:
                return handler.name
        raise InvalidPeriodic(
            f"{getattr(fn, '__name__', fn)!r} is not a registered handler: put "
            "@registry.periodic above @registry.handler, or pass type="
        )

    @property
    def schedules(self) -> list[Schedule]:
        """The periodic schedules declared with the handlers."""
        return list(self._schedules.values())

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise HandlerMissing(f"no handler for job type {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)
