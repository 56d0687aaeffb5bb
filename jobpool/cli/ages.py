"""Ages and retentions on the command line: ``7d``, ``36h``, ``90m``, ``30s``, ``2w``.

A bare number is days, as ``dlq purge --older-than 14`` has always read it. A typer
``parser`` for options whose value is a ``timedelta``; a bad value is a usage error
(exit 2) naming the accepted forms.
"""

from __future__ import annotations

import re
from datetime import timedelta

import typer

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "": "days", "w": "weeks"}
AGE_METAVAR = "AGE"
AGE_HELP = "e.g. 7d, 36h, 90m, 2w (a bare number is days)"


def parse_age(text: str) -> timedelta:
    """The age ``text`` names; ``typer.BadParameter`` if it names none."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age: {AGE_HELP}")
    try:
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    except OverflowError:
        raise typer.BadParameter(f"{text!r} is too long an age") from None


def format_age(age: timedelta) -> str:
    """``age`` the way ``parse_age`` reads it, in its largest whole unit up to days:
    ``7d``, ``36h``, ``90m``."""
    seconds = age.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
