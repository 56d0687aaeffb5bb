"""Logging of the long-running commands (``worker``, ``operator``): text for people,
JSON lines for log collectors, and the two options that choose them.

Both options take a fixed set of values, so a typo (``--log-level verbose``,
``--log-format yaml``) is a usage error of one line, before anything starts.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Annotated

import typer


class LogLevel(StrEnum):
    """The levels ``--log-level`` accepts."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    """The formats ``--log-format`` accepts."""

    TEXT = "text"
    JSON = "json"


LogLevelOption = Annotated[
    LogLevel,
    typer.Option(envvar="JOBPOOL_LOG_LEVEL", help="debug, info, warning or error."),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(envvar="JOBPOOL_LOG_FORMAT", help="text, or json for log collectors."),
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
    """Log to stderr at ``level`` (a :class:`LogLevel`) in ``log_format``."""
    handler = logging.StreamHandler()
    if LogFormat(log_format) is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=LogLevel(level).upper(), handlers=[handler], force=True)
