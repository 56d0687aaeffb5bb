"""JSON logs (``--log-format json``): one object per line, as log collectors expect."""

from __future__ import annotations

import json
import logging
import sys

from jobpool.cli.logs import JsonFormatter


def test_a_record_is_one_json_object_with_its_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "jobpool.worker", logging.WARNING, __file__, 1, "lost %d shards", (3,), None
        )
        record.exc_info = sys.exc_info()

    line = JsonFormatter().format(record)

    assert "\n" not in line.split('"exception"')[0]
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "jobpool.worker"
    assert entry["message"] == "lost 3 shards"
    assert "RuntimeError: boom" in entry["exception"]
