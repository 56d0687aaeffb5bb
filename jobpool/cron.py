"""Periodic schedules: a cron expression read in a time zone, and the ticks it makes.

A :class:`Schedule` is what a handler module (``@registry.periodic``) or a JobPool
spec (``spec.schedules``) declares: enqueue a job of ``type`` with ``payload`` at every
tick of ``cron`` in ``timezone``. Pure code, no I/O: the worker's periodic service and
the operator's status both compute ticks here, with a clock they pass in.

* **Cron**: five fields (minute to day of week), or six with seconds first
  (``*/10 * * * * *``), evaluated by ``cronsim`` the way Debian's cron does, including
  its DST rules: a daily job whose local time is skipped when clocks go forward runs
  once right after the gap; one whose local time occurs twice when clocks go back runs
  once. Jobs that run every hour or more often follow real time (an hour that happens
  twice ticks twice).
* **Ticks are instants** (UTC datetimes): ``periodic:<name>:<tick>`` names each one.
* **What is due** (:func:`due_ticks`): the ticks after an *anchor* — the last tick
  enqueued, or the moment the schedule was (re)defined, whichever is later: ticks from
  before a schedule existed never fire — up to now. Without ``catch_up`` only the
  latest of them is due (a worker down for a day enqueues one job, not a burst); with
  it every one is, oldest first, at most ``limit`` per call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from jobpool.errors import InvalidJobType, InvalidPeriodic
from jobpool.models import JSON, Priority, check_job_type, check_tenant

DEFAULT_TIMEZONE = "UTC"
DEFAULT_TENANT = "default"
MAX_CRON_LENGTH = 256
MAX_SCHEDULE_PAYLOAD_BYTES = 64 * 1024
"""A schedule's payload is configuration, stored with the schedule: kept small."""
CATCH_UP_LIMIT = 100
"""With ``catch_up``, missed ticks enqueued per call (the rest follow at the next)."""
_ONE_SECOND = timedelta(seconds=1)


def check_cron(expression: object) -> str:
    """A cron expression cronsim reads: 5 fields, or 6 with seconds first."""
    if not isinstance(expression, str) or not 0 < len(expression) <= MAX_CRON_LENGTH:
        raise InvalidPeriodic(f"invalid cron expression {expression!r}: expected 5 or 6 fields")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise InvalidPeriodic(f"invalid cron expression {expression!r}: {exc}") from None
    return expression


def check_timezone(name: object) -> str:
    """An IANA time zone name (``Europe/Paris``, ``UTC``) that zoneinfo knows."""
    try:
        if isinstance(name, str) and name:
            ZoneInfo(name)
            return name
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise InvalidPeriodic(f"unknown time zone {name!r}: use an IANA name such as Europe/Paris")


def check_schedule_name(name: object) -> str:
    """A schedule name: the rules of a job type name (a schedule is often named after one)."""
    try:
        return check_job_type(name)
    except InvalidJobType:
        raise InvalidPeriodic(
            f"invalid schedule name {name!r}: it must start with a letter and hold at most "
            "128 of A-Z a-z 0-9 _ . : -"
        ) from None


def check_schedule_payload(payload: object) -> JSON:
    """A JSON value of at most ``MAX_SCHEDULE_PAYLOAD_BYTES``."""
    try:
        size = len(json.dumps(payload, allow_nan=False).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPeriodic(f"the schedule's payload is not JSON: {exc}") from None
    if size > MAX_SCHEDULE_PAYLOAD_BYTES:
        raise InvalidPeriodic(
            f"the schedule's payload is {size} bytes of JSON, over {MAX_SCHEDULE_PAYLOAD_BYTES}"
        )
    return payload


class Schedule(BaseModel):
    """Enqueue a ``type`` job with ``payload`` at every tick of ``cron`` in ``timezone``."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, AfterValidator(check_schedule_name)] = Field(
        description="unique in the pool; names the jobs' dedupe keys"
    )
    cron: Annotated[str, AfterValidator(check_cron)] = Field(
        description="5 fields, or 6 with seconds first"
    )
    type: Annotated[str, AfterValidator(check_job_type)] = Field(description="the job type")
    payload: Annotated[JSON, AfterValidator(check_schedule_payload)] = Field(
        default_factory=dict, description="the payload of every job"
    )
    timezone: Annotated[str, AfterValidator(check_timezone)] = Field(
        default=DEFAULT_TIMEZONE, description="IANA zone the cron reads in"
    )
    priority: Priority = Priority.NORMAL
    tenant: Annotated[str, AfterValidator(check_tenant)] = DEFAULT_TENANT
    catch_up: bool = Field(
        default=False, description="enqueue every missed tick, not only the latest"
    )

    @classmethod
    def declare(cls, **fields: Any) -> Schedule:
        """A validated schedule; a bad field is one ``InvalidPeriodic`` line naming it."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            message = (
                str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
            )
            raise InvalidPeriodic(f"schedule {fields.get('name')!r}: {where}: {message}") from None

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``moment`` (aware), in order, as UTC datetimes."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        for tick in CronSim(self.cron, local):
            yield tick.astimezone(UTC)

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after``; None if there is none in 50 years."""
        return next(self.ticks_after(after), None)

    def latest_tick(self, at_or_before: datetime) -> datetime | None:
        """The last tick at or before ``at_or_before``; None if none in the last 50 years."""
        # Reverse iteration yields ticks strictly before its start: start one second
        # past the whole second (ticks fall on whole seconds).
        start = at_or_before.replace(microsecond=0) + _ONE_SECOND
        reverse = CronSim(self.cron, start.astimezone(ZoneInfo(self.timezone)), reverse=True)
        tick = next(reverse, None)
        return tick.astimezone(UTC) if tick is not None else None


def anchor(*, last_tick: datetime | None, defined_at: datetime) -> datetime:
    """Ticks after this moment may fire: after the last enqueued, and after the
    schedule's (re)definition (a changed cron does not fire its past ticks)."""
    return max(last_tick, defined_at) if last_tick is not None else defined_at


def due_ticks(
    schedule: Schedule, *, after: datetime, now: datetime, limit: int = CATCH_UP_LIMIT
) -> list[datetime]:
    """The ticks to enqueue at ``now``, oldest first, given the ``anchor`` ``after``.

    Without ``catch_up``: the latest tick in (after, now], if any. With it: the ticks
    in (after, now], at most ``limit`` of the oldest.
    """
    if not schedule.catch_up:
        latest = schedule.latest_tick(now)
        return [latest] if latest is not None and latest > after else []
    due = []
    for tick in schedule.ticks_after(after):
        if tick > now or len(due) == limit:
            break
        due.append(tick)
    return due


def upcoming_tick(schedule: Schedule, *, after: datetime, now: datetime) -> datetime | None:
    """The tick the schedule waits for: the oldest due one if it lags, else the next."""
    due = due_ticks(schedule, after=after, now=now, limit=1)
    return due[0] if due else schedule.next_tick(max(after, now))


def tick_key(name: str, tick: datetime) -> str:
    """The dedupe key of a tick's job: ``periodic:<name>:2025-03-30T01:00:00Z``."""
    return f"periodic:{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
