"""``@registry.periodic``: schedules declared with the handlers, checked at declaration."""

from __future__ import annotations

import pytest

import jobpool
from jobpool.cron import Schedule
from jobpool.errors import InvalidPeriodic
from jobpool.models import Priority


def test_a_periodic_handler_declares_a_schedule_of_its_type() -> None:
    registry = jobpool.Registry()

    @registry.periodic("*/5 * * * *", payload={"full": False}, timezone="Europe/Paris")
    @registry.handler("cleanup")
    async def cleanup(payload: object, ctx: jobpool.Context) -> None: ...

    assert registry.schedules == [
        Schedule(
            name="cleanup",
            cron="*/5 * * * *",
            type="cleanup",
            payload={"full": False},
            timezone="Europe/Paris",
        )
    ]


def test_a_schedule_may_name_another_type_and_set_every_option() -> None:
    registry = jobpool.Registry()
    registry.handler("report")(lambda payload, ctx: None)

    @registry.periodic(
        "0 0 * * * *",
        name="hourly-report",
        type="report",
        priority="high",
        tenant="acme",
        catch_up=True,
    )
    def anything() -> None: ...

    (schedule,) = registry.schedules
    assert (schedule.name, schedule.type, schedule.priority) == (
        "hourly-report",
        "report",
        Priority.HIGH,
    )
    assert (schedule.tenant, schedule.catch_up, schedule.payload) == ("acme", True, {})


def test_periodic_below_handler_says_how_to_fix_it() -> None:
    registry = jobpool.Registry()
    with pytest.raises(InvalidPeriodic, match=r"put @registry\.periodic above @registry\.handler"):

        @registry.handler("late")
        @registry.periodic("* * * * *")
        async def late(payload: object, ctx: jobpool.Context) -> None: ...


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"cron": "* * *"}, "cron: invalid cron expression"),
        ({"timezone": "Europe/Nowhere"}, "timezone: unknown time zone"),
        ({"priority": "urgent"}, "priority"),
        ({"payload": {1, 2}}, "payload: the schedule's payload is not JSON"),
    ],
)
def test_a_bad_schedule_is_one_typed_line(options: dict[str, object], problem: str) -> None:
    registry = jobpool.Registry()
    registry.handler("t")(lambda payload, ctx: None)
    cron = options.pop("cron", "* * * * *")
    with pytest.raises(InvalidPeriodic, match=problem) as raised:
        registry.periodic(cron, type="t", **options)(lambda: None)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_two_schedules_of_one_name_are_refused() -> None:
    registry = jobpool.Registry()
    registry.periodic("* * * * *", type="t")(lambda: None)
    with pytest.raises(InvalidPeriodic, match="already declared"):
        registry.periodic("0 * * * *", type="t")(lambda: None)
