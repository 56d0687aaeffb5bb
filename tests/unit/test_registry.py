"""Handler registration and each handler's retry policy."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import jobpool
from jobpool.errors import HandlerMissing, InvalidHandler, InvalidJobType
from jobpool.worker import RetryPolicy

POOL_POLICY = RetryPolicy(max_attempts=7, base_s=0.5, cap_s=30)


class Payload(BaseModel):
    n: int


def test_a_handler_without_options_follows_the_pools_policy() -> None:
    registry = jobpool.Registry()
    registry.handler("plain")(lambda payload, ctx: None)

    assert registry.get("plain").policy(POOL_POLICY) == POOL_POLICY


def test_max_attempts_of_a_handler_overrides_only_the_attempts_of_the_pools_policy() -> None:
    registry = jobpool.Registry()
    registry.handler("few", max_attempts=2)(lambda payload, ctx: None)

    assert registry.get("few").policy(POOL_POLICY) == POOL_POLICY.model_copy(
        update={"max_attempts": 2}
    )


def test_a_handlers_own_policy_replaces_the_pools() -> None:
    own = RetryPolicy(max_attempts=3, base_s=2, cap_s=10)
    registry = jobpool.Registry()
    registry.handler("own", retry=own, max_attempts=4)(lambda payload, ctx: None)

    assert registry.get("own").policy(POOL_POLICY) == own.model_copy(update={"max_attempts": 4})


def test_the_payload_model_validates_and_a_plain_handler_gets_json() -> None:
    registry = jobpool.Registry()
    registry.handler("typed", payload=Payload)(lambda payload, ctx: None)
    registry.handler("plain")(lambda payload, ctx: None)

    assert registry.get("typed").parse({"n": 3}) == Payload(n=3)
    assert registry.get("plain").parse({"n": "x"}) == {"n": "x"}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"timeout": 0}, InvalidHandler),
        ({"max_attempts": 0}, InvalidHandler),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        jobpool.Registry().handler("job", **options)  # type: ignore[arg-type]


def test_bad_names_duplicates_and_unknown_types_are_refused() -> None:
    registry = jobpool.Registry()
    registry.handler("job")(lambda payload, ctx: None)
    with pytest.raises(InvalidHandler, match="already has a handler"):
        registry.handler("job")
    with pytest.raises(InvalidJobType):
        registry.handler("not a name")
    with pytest.raises(HandlerMissing, match="nothing"):
        registry.get("nothing")
    assert [handler.name for handler in registry] == ["job"]
    assert len(registry) == 1
