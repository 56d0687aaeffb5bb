"""A batch with several bad items is refused with one ``InvalidBatch`` naming each of them
(index and what is wrong), so a caller fixes them all in one go."""

from __future__ import annotations

import math

import pytest

from jobpool import Item
from jobpool.client.validation import MAX_LISTED_ITEMS, SubmitOptions, build_jobs
from jobpool.errors import InvalidBatch, InvalidInput, PayloadNotSerializable, UnknownPriority


def build(items: list[object]) -> None:
    build_jobs(
        "email.send", items, SubmitOptions(), shards=8, max_payload_bytes=50, traceparent=None
    )


def test_every_bad_item_is_named_with_its_index_and_field() -> None:
    items = [{"ok": 0}, {"x": math.nan}, {"ok": 2}, Item(payload=3, priority="urgent"), "y" * 99]
    with pytest.raises(InvalidBatch) as info:
        build(items)
    message = str(info.value)
    assert message.startswith("3 of 5 items are invalid: item #1: payload is not JSON")
    assert "; item #3: unknown priority 'urgent'" in message
    assert "; item #4: payload is 101 bytes of JSON, over the limit of 50" in message
    assert "\n" not in message
    assert [index for index, _ in info.value.items] == [1, 3, 4]
    assert [type(error) for _, error in info.value.items] == [
        PayloadNotSerializable, UnknownPriority, type(info.value.items[2][1]),
    ]  # fmt: skip
    assert isinstance(info.value, InvalidInput)


def test_a_long_list_of_bad_items_is_cut_in_the_message_but_kept_whole() -> None:
    items = [{"x": math.nan}] * (MAX_LISTED_ITEMS + 7)
    with pytest.raises(InvalidBatch) as info:
        build(items)
    message = str(info.value)
    assert message.count("item #") == MAX_LISTED_ITEMS
    assert message.endswith("; and 7 more")
    assert len(info.value.items) == MAX_LISTED_ITEMS + 7


def test_one_bad_item_keeps_its_own_error_type() -> None:
    with pytest.raises(UnknownPriority, match=r"^item #1: unknown priority"):
        build([{"ok": 0}, Item(payload=1, priority="urgent")])
