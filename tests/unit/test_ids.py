"""Job ids (jobpool/ids.py): RFC 9562 UUIDv7, time-ordered across milliseconds, unique."""

from __future__ import annotations

import time
import uuid

from jobpool.ids import new_job_id, new_job_ids


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unix_ms(job_id: uuid.UUID) -> int:
    return job_id.int >> 80


def _next_millisecond(after: int) -> None:
    """Spin (no sleep) until the wall clock has left millisecond ``after``."""
    deadline = time.monotonic() + 5
    while _now_ms() <= after:
        assert time.monotonic() < deadline, "the clock did not advance"


def test_is_a_uuid_version_7_with_the_rfc_variant() -> None:
    for _ in range(1000):
        job_id = new_job_id()
        assert isinstance(job_id, uuid.UUID)
        assert job_id.version == 7
        assert job_id.variant == uuid.RFC_4122
        assert (job_id.int >> 76) & 0xF == 0x7
        assert (job_id.int >> 62) & 0x3 == 0b10


def test_canonical_text_form_shows_the_version() -> None:
    text = str(new_job_id())
    assert len(text) == 36
    assert text == text.lower()
    assert text[14] == "7"
    assert text[19] in "89ab"
    assert uuid.UUID(text) == uuid.UUID(text.upper())


def test_carries_the_current_unix_milliseconds() -> None:
    before = _now_ms()
    job_id = new_job_id()
    after = _now_ms()
    assert before <= _unix_ms(job_id) <= after


def test_ids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    ids = []
    for _ in range(20):
        ids.append(new_job_id())
        _next_millisecond(_unix_ms(ids[-1]))
    assert ids == sorted(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)  # text order agrees
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)  # so does Postgres' uuid


def test_ids_are_time_ordered_across_a_burst() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    stamps = [_unix_ms(i) for i in ids]
    assert stamps == sorted(stamps)  # never goes back in time within one process


def test_ten_thousand_ids_are_unique() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    # 74 random bits: even ids of the same millisecond differ in their random part.
    random_parts = {i.int & ((1 << 62) - 1) for i in ids}
    assert len(random_parts) == len(ids)


def test_a_batch_of_ids_ascends_in_its_order_and_is_unique() -> None:
    ids = new_job_ids(10_000)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        assert job_id.version == 7
        assert job_id.variant == uuid.RFC_4122
