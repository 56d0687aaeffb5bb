"""Logging of the long-running commands (``worker``, ``operator``): text for people,
JSON lines for log collectors, and the two options that choose them."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

LogLevelOption = Annotated[
    str, typer.Option(envvar="JOBPOOL_LOG_LEVEL", help="debug, info, warning or error.")
]
LogFormatOption = Annotated[
    str, typer.Option(envvar="JOBPOOL_LOG_FORMAT", help="text, or json for log collectors.")
]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors in a cluster expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
