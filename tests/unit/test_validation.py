"""Submit-argument validation (jobpool/client/validation.py), with no I/O.

Invariant 7: bad input gets a clear, typed error (a subclass of
``jobpool.errors.InvalidInput``) before anything is written, and errors about one item
of a batch name that item. The options go through ``SubmitOptions`` exactly as
``Client.submit``/``Client.enqueue`` build them.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobpool import Item
from jobpool.client.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_KEY_LENGTH,
    SubmitOptions,
    as_items,
    build_jobs,
    check_job_type,
    encode_payload,
    parse_priority,
    resolve_run_at,
)
from jobpool.errors import (
    InvalidInput,
    InvalidJobType,
    InvalidSchedule,
    PayloadNotSerializable,
    PayloadTooLarge,
    UnknownPriority,
)
from jobpool.models import Duration, NewJob, Priority
from jobpool.sharding import shard_for

SHARDS = 16
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
LATER = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)


def build(
    payload: Any,
    *,
    job_type: str = "email.send",
    shards: int = SHARDS,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    traceparent: str | None = None,
    **options: Any,
) -> list[NewJob]:
    """What ``Client.build`` does: options through ``SubmitOptions``, then ``build_jobs``."""
    items, _ = as_items(payload)
    return build_jobs(
        job_type,
        items,
        SubmitOptions(**options),
        shards=shards,
        max_payload_bytes=max_payload_bytes,
        traceparent=traceparent,
    )


def one(payload: Any = None, **kwargs: Any) -> NewJob:
    (job,) = build({"to": "a@example.com"} if payload is None else payload, **kwargs)
    return job


# -- job types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "Z", "email.send", "billing:invoice-v2", "a_b.c:d-e", "x9", "A" * 128]
)
def test_valid_job_types(name: str) -> None:
    assert check_job_type(name) == name
    assert one(job_type=name).type == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1send",
        "_send",
        ".send",
        "-send",
        "send mail",
        "send/mail",
        "send*",
        "émail",
        "A" * 129,
        "send\n",  # a regex `$` also matches before a final newline
        "\nsend",
        "send\x00",
        " send",
    ],
)
def test_invalid_job_type_names(name: str) -> None:
    with pytest.raises(InvalidJobType, match="invalid job type"):
        check_job_type(name)
    with pytest.raises(InvalidJobType):
        build({"x": 1}, job_type=name)


@pytest.mark.parametrize("name", [None, 42, b"send", ["send"]])
def test_non_string_job_types(name: Any) -> None:
    with pytest.raises(InvalidJobType):
        check_job_type(name)


def test_invalid_job_type_message_names_the_value() -> None:
    with pytest.raises(InvalidJobType, match="'send mail'"):
        check_job_type("send mail")


def test_invalid_job_type_is_refused_even_for_an_empty_batch() -> None:
    with pytest.raises(InvalidJobType):
        build([], job_type="no good")


def test_input_errors_are_value_errors_and_jobpool_errors() -> None:
    with pytest.raises(ValueError, match="invalid job type"):
        check_job_type("")


# -- priorities ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("high", Priority.HIGH),
        ("normal", Priority.NORMAL),
        ("low", Priority.LOW),
        (Priority.HIGH, Priority.HIGH),
    ],
)
def test_known_priorities(value: str | Priority, expected: Priority) -> None:
    assert parse_priority(value) is expected
    assert one(priority=value).priority is expected


def test_priority_ranks_are_low_to_critical() -> None:
    ranks = [p.rank for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL)]
    assert ranks == [0, 1, 2, 3]
    assert all(Priority.from_rank(p.rank) is p for p in Priority)


def test_default_priority_is_normal() -> None:
    assert one().priority is Priority.NORMAL


@pytest.mark.parametrize("value", ["urgent", "HIGH", "Normal", "", " low"])
def test_unknown_priority(value: str) -> None:
    with pytest.raises(UnknownPriority, match="critical, high, normal, low") as info:
        parse_priority(value)
    assert repr(value) in str(info.value)
    with pytest.raises(UnknownPriority):
        build({"x": 1}, priority=value)


@pytest.mark.parametrize("value", [5, 2.0])
def test_non_string_priority_is_an_unknown_priority(value: Any) -> None:
    """Not a pydantic ValidationError: the typed error of the public API."""
    with pytest.raises(UnknownPriority):
        build({"x": 1}, priority=value)


# -- payloads --------------------------------------------------------------------


def test_payload_is_encoded_as_compact_utf8_json() -> None:
    payload = {"to": "zoë@example.com", "n": [1, 2.5, None, True], "nested": {"k": "ü"}}
    text = one(payload).payload_json
    assert text == '{"to":"zoë@example.com","n":[1,2.5,null,true],"nested":{"k":"ü"}}'


@pytest.mark.parametrize("payload", [None, 0, "text", [1, 2], {}, 10**30, -0.5])
def test_any_json_value_is_a_payload(payload: Any) -> None:
    assert json.loads(encode_payload(payload, max_bytes=1000)) == payload


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


def _deep(levels: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(levels):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


@pytest.mark.parametrize(
    "payload",
    [
        math.nan,
        {"score": math.nan},
        [1, math.inf],
        {"x": -math.inf},
        {1, 2},
        b"bytes",
        object(),
        {"when": datetime(2030, 1, 1, tzinfo=UTC)},
        {("tuple", "key"): 1},
        uuid.uuid4(),
        _circular(),
        _deep(100_000),
        {"name": "a\ud800b"},
    ],
    ids=[
        "nan",
        "nested-nan",
        "inf",
        "neg-inf",
        "set",
        "bytes",
        "object",
        "datetime",
        "tuple-key",
        "uuid",
        "circular",
        "too-deep",
        "lone-surrogate",
    ],
)
def test_non_serialisable_payload(payload: Any) -> None:
    with pytest.raises(PayloadNotSerializable, match="payload"):
        encode_payload(payload, max_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    with pytest.raises(PayloadNotSerializable):
        build(Item(payload=payload))


def test_payload_with_a_nul_character_is_refused() -> None:
    """JSON can carry U+0000 but Postgres jsonb cannot store it: refuse it up front."""
    with pytest.raises(InvalidInput, match="payload"):
        build({"name": "a\x00b"})


def test_payload_size_limit_is_exact() -> None:
    limit = 64
    fits = "x" * (limit - 2)  # two bytes of quotes
    assert len(encode_payload(fits, max_bytes=limit).encode()) == limit
    assert one(fits, max_payload_bytes=limit).payload_json == f'"{fits}"'
    with pytest.raises(PayloadTooLarge, match="65 bytes of JSON, over the limit of 64"):
        encode_payload(fits + "x", max_bytes=limit)
    with pytest.raises(PayloadTooLarge):
        build(fits + "x", max_payload_bytes=limit)


def test_payload_size_counts_utf8_bytes_not_characters() -> None:
    payload = "éé"  # 2 characters, 4 bytes, 6 bytes of JSON with the quotes
    assert encode_payload(payload, max_bytes=6) == '"éé"'
    with pytest.raises(PayloadTooLarge, match="6 bytes"):
        encode_payload(payload, max_bytes=5)


def test_default_payload_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_PAYLOAD_BYTES == 1024 * 1024
    big = "x" * (DEFAULT_MAX_PAYLOAD_BYTES - 2)
    assert len(one(big).payload_json) == DEFAULT_MAX_PAYLOAD_BYTES
    with pytest.raises(PayloadTooLarge):
        build(big + "x")


# -- schedule --------------------------------------------------------------------


def test_no_schedule_means_now_decided_by_the_database() -> None:
    assert resolve_run_at(None, None) is None
    assert one().run_at is None


@pytest.mark.parametrize("delay", [0, 0.0, timedelta(0)])
def test_zero_delay_means_now(delay: Any) -> None:
    assert resolve_run_at(delay, None) is None
    assert one(delay=delay).run_at is None


@pytest.mark.parametrize("delay", [30, 30.0, timedelta(seconds=30)])
def test_delay_is_relative_to_now(delay: Any) -> None:
    before = datetime.now(UTC)
    run_at = one(delay=delay).run_at
    after = datetime.now(UTC)
    assert run_at is not None
    assert before + timedelta(seconds=30) <= run_at <= after + timedelta(seconds=30)


def test_run_at_is_kept_as_given() -> None:
    assert one(run_at=LATER).run_at == LATER
    tz = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2031, 1, 1, 12, 0, tzinfo=tz)
    assert one(run_at=local).run_at == local


def test_run_at_in_the_past_is_allowed() -> None:
    past = datetime(2001, 1, 1, tzinfo=UTC)
    assert one(run_at=past).run_at == past


def test_delay_and_run_at_together_are_refused() -> None:
    with pytest.raises(InvalidSchedule, match="not both"):
        resolve_run_at(5, LATER)
    with pytest.raises(InvalidSchedule):
        build({"x": 1}, delay=5, run_at=LATER)


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-5), timedelta(days=-1)])
def test_negative_delay_is_refused(delay: Any) -> None:
    with pytest.raises(InvalidSchedule, match="must not be negative"):
        resolve_run_at(delay, None)
    with pytest.raises(InvalidSchedule):
        build({"x": 1}, delay=delay)


@pytest.mark.parametrize("delay", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_delay_is_an_invalid_schedule(delay: float) -> None:
    with pytest.raises(InvalidSchedule):
        resolve_run_at(delay, None)
    with pytest.raises(InvalidSchedule):
        build({"x": 1}, delay=delay)


def test_naive_run_at_is_refused() -> None:
    naive = datetime(2031, 1, 1, 12, 0)
    with pytest.raises(InvalidSchedule, match="timezone-aware"):
        resolve_run_at(None, naive)
    with pytest.raises(InvalidSchedule):
        build({"x": 1}, run_at=naive)


def test_unparseable_delay_is_an_invalid_schedule() -> None:
    with pytest.raises(InvalidSchedule):
        build({"x": 1}, delay="soon")


# -- max_attempts, duration, text fields ----------------------------------------


@pytest.mark.parametrize("value", [None, 1, 5, 1000])
def test_valid_max_attempts(value: int | None) -> None:
    assert one(max_attempts=value).max_attempts == value


@pytest.mark.parametrize("value", [0, -1, -100])
def test_max_attempts_below_one_is_refused(value: int) -> None:
    with pytest.raises(InvalidInput, match="max_attempts must be an integer >= 1"):
        build({"x": 1}, max_attempts=value)


@pytest.mark.parametrize("value", [True, False, 1.5, "three"])
def test_max_attempts_that_is_not_an_integer_is_refused(value: Any) -> None:
    """A bool is not a count, and a float or a word is not an integer: typed error."""
    with pytest.raises(InvalidInput, match="max_attempts"):
        build({"x": 1}, max_attempts=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("short", Duration.SHORT), ("long", Duration.LONG), (Duration.LONG, Duration.LONG)],
)
def test_durations(value: Any, expected: Duration) -> None:
    assert one(duration=value).duration is expected


def test_default_duration_is_short() -> None:
    assert one().duration is Duration.SHORT


def test_unknown_duration_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown duration 'forever'"):
        build({"x": 1}, duration="forever")


@pytest.mark.parametrize("field", ["dedupe_key", "key", "request_id", "user_id"])
def test_text_fields_accept_up_to_the_limit(field: str) -> None:
    value = "k" * MAX_KEY_LENGTH
    assert getattr(one(**{field: value}), field) == value


@pytest.mark.parametrize("field", ["dedupe_key", "key", "request_id", "user_id"])
@pytest.mark.parametrize("value", ["", "k" * (MAX_KEY_LENGTH + 1)], ids=["empty", "too-long"])
def test_text_fields_refuse_empty_and_too_long(field: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        build({"x": 1}, **{field: value})


@pytest.mark.parametrize("field", ["dedupe_key", "key", "request_id", "user_id"])
@pytest.mark.parametrize("value", ["a\x00b", "a\ud800b"], ids=["nul", "lone-surrogate"])
def test_text_fields_refuse_what_postgres_text_cannot_hold(field: str, value: str) -> None:
    """Postgres text holds neither NUL nor a lone surrogate (not encodable as UTF-8)."""
    with pytest.raises(InvalidInput, match=field):
        build({"x": 1}, **{field: value})


def test_request_context_is_carried() -> None:
    job = one(request_id="req-1", user_id="user-7", traceparent=TRACEPARENT)
    assert (job.request_id, job.user_id, job.traceparent) == ("req-1", "user-7", TRACEPARENT)


# -- batches and Item overrides -------------------------------------------------


def test_a_list_is_a_batch_in_order_with_distinct_ids() -> None:
    jobs = build([{"n": i} for i in range(5)], traceparent=TRACEPARENT)
    assert [j.payload_json for j in jobs] == [f'{{"n":{i}}}' for i in range(5)]
    assert len({j.id for j in jobs}) == 5
    assert all(j.id.version == 7 for j in jobs)
    assert all(j.traceparent == TRACEPARENT for j in jobs)
    assert all(0 <= j.shard < SHARDS for j in jobs)


def test_an_empty_list_builds_nothing() -> None:
    assert build([]) == []


def test_item_wrapping_a_list_is_one_job() -> None:
    items, is_batch = as_items(Item(payload=[1, 2, 3]))
    assert not is_batch
    assert len(items) == 1
    (job,) = build(Item(payload=[1, 2, 3]))
    assert job.payload_json == "[1,2,3]"


def test_tuple_payload_is_one_job() -> None:
    items, is_batch = as_items((1, 2))
    assert (items, is_batch) == ([(1, 2)], False)


def test_item_accepts_the_payload_positionally() -> None:
    """As documented on Item and Client.submit: ``Item(p, dedupe_key="a")``."""
    item = Item({"to": "a@example.com"}, dedupe_key="a")  # type: ignore[misc]
    assert item.payload == {"to": "a@example.com"}
    assert item.dedupe_key == "a"


def test_item_overrides_dedupe_key_and_priority() -> None:
    jobs = build(
        [
            Item(payload=1, dedupe_key="a", priority="critical"),
            Item(payload=2, dedupe_key="b"),
            3,
        ],
        priority="low",
    )
    assert [j.dedupe_key for j in jobs] == ["a", "b", None]
    assert [j.priority for j in jobs] == [Priority.CRITICAL, Priority.LOW, Priority.LOW]
    assert [j.payload_json for j in jobs] == ["1", "2", "3"]


def test_item_fields_left_out_take_the_calls_values() -> None:
    (job,) = build(
        [Item(payload=1)],
        priority="high",
        dedupe_key="call-key",
        key="order-1",
        request_id="req",
        user_id="usr",
        max_attempts=3,
        duration="long",
        run_at=LATER,
    )
    assert job.priority is Priority.HIGH
    assert (job.dedupe_key, job.key) == ("call-key", "order-1")
    assert (job.request_id, job.user_id) == ("req", "usr")
    assert (job.max_attempts, job.duration, job.run_at) == (3, Duration.LONG, LATER)


def test_item_overrides_key_and_request_context() -> None:
    jobs = build(
        [Item(payload=1, key="k1", request_id="r1", user_id="u1"), 2],
        key="k0",
        request_id="r0",
        user_id="u0",
    )
    assert [(j.key, j.request_id, j.user_id) for j in jobs] == [
        ("k1", "r1", "u1"),
        ("k0", "r0", "u0"),
    ]


def test_item_delay_replaces_the_calls_run_at() -> None:
    before = datetime.now(UTC)
    jobs = build([Item(payload=1, delay=60), 2], run_at=LATER)
    after = datetime.now(UTC)
    assert jobs[0].run_at is not None
    assert before + timedelta(seconds=60) <= jobs[0].run_at <= after + timedelta(seconds=60)
    assert jobs[1].run_at == LATER


def test_item_run_at_replaces_the_calls_delay() -> None:
    jobs = build([Item(payload=1, run_at=LATER), 2], delay=timedelta(hours=1))
    assert jobs[0].run_at == LATER
    assert jobs[1].run_at is not None
    assert jobs[1].run_at < LATER


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Item(payload=1, priority="urgent"), UnknownPriority),
        (Item(payload=1, delay=-5), InvalidSchedule),
        (Item(payload=1, run_at=datetime(2031, 1, 1)), InvalidSchedule),
        (Item(payload=1, delay=5, run_at=LATER), InvalidSchedule),
        (Item(payload=1, dedupe_key=""), InvalidInput),
        (Item(payload=1, key="k" * (MAX_KEY_LENGTH + 1)), InvalidInput),
        (Item(payload=math.nan), PayloadNotSerializable),
        (Item(payload="x" * 100), PayloadTooLarge),
        ({"x": math.nan}, PayloadNotSerializable),
        ("x" * 100, PayloadTooLarge),
    ],
    ids=[
        "priority",
        "negative-delay",
        "naive-run-at",
        "delay-and-run-at",
        "empty-dedupe-key",
        "long-key",
        "item-nan",
        "item-too-large",
        "nan",
        "too-large",
    ],
)
def test_batch_errors_name_the_item_index(bad: Any, error: type[Exception]) -> None:
    batch = [{"ok": 0}, {"ok": 1}, bad, {"ok": 3}]
    with pytest.raises(error) as info:
        build(batch, max_payload_bytes=50)
    assert "#2" in str(info.value), str(info.value)


def test_single_payload_errors_do_not_mention_an_index() -> None:
    with pytest.raises(PayloadNotSerializable) as info:
        build({"x": math.nan})
    assert "#" not in str(info.value)


# -- routing key: key > dedupe_key > id -----------------------------------------


def test_routing_uses_key_first() -> None:
    job = one(key="order-7", dedupe_key="d-1")
    assert job.shard == shard_for("order-7", SHARDS)


def test_routing_falls_back_to_dedupe_key() -> None:
    job = one(dedupe_key="d-1")
    assert job.shard == shard_for("d-1", SHARDS)


def test_routing_falls_back_to_the_job_id() -> None:
    for job in build([{"n": i} for i in range(50)]):
        assert job.shard == shard_for(str(job.id), SHARDS)


def test_item_key_decides_the_items_shard() -> None:
    jobs = build([Item(payload=1, key="a"), Item(payload=2, dedupe_key="b"), 3], key="c")
    assert jobs[0].shard == shard_for("a", SHARDS)
    assert jobs[1].shard == shard_for("c", SHARDS)  # the call's key beats the item's dedupe key
    assert jobs[2].shard == shard_for("c", SHARDS)


def test_jobs_with_the_same_key_land_on_the_same_shard() -> None:
    jobs = build([{"n": i} for i in range(100)], key="customer-42", shards=4096)
    assert {j.shard for j in jobs} == {shard_for("customer-42", 4096)}
    other = build([{"n": i} for i in range(100)], shards=4096)
    assert len({j.shard for j in other}) > 50  # without a key they spread out


# Keys that Postgres text can hold: valid UTF-8 (no lone surrogates), no NUL.
KEYS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=MAX_KEY_LENGTH
)


@given(key=KEYS, shards=st.integers(1, 4096))
def test_same_key_same_shard_property(key: str, shards: int) -> None:
    jobs = build(
        [Item(payload=1, key=key), Item(payload=2, key=key, dedupe_key="x")], shards=shards
    )
    assert jobs[0].shard == jobs[1].shard == shard_for(key, shards)
