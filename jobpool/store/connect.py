"""Opening connections with clear, typed errors, and keeping passwords out of them.

asyncpg reports a bad connection string in several ways (``ValueError``,
``OverflowError``, ``ClientConfigurationError``) and an unreachable or refusing server
in several more (``OSError``, ``PostgresError``, ``InterfaceError``). Callers get one
of two errors instead: ``InvalidDsn`` or ``DatabaseUnavailable``, whose messages name
the DSN without its password and never echo the password.

Redaction holds for malformed DSNs too (no scheme, a password holding ``/`` or ``@``,
libpq ``key=value`` strings): every span that could be a password is a candidate, and
the label names only a well-formed ``postgresql://`` URI's parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from jobpool.errors import DatabaseUnavailable, InvalidDsn

UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
MALFORMED = (ValueError, OverflowError, asyncpg.ClientConfigurationError)
_SCHEMES = frozenset({"postgres", "postgresql"})
_WHERE_PARAMS = ("host", "port")
_PASSWORD_CUTS = re.compile(r"[/?#@]")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def dsn_label(dsn: str) -> str:
    """``scheme://user@host/database`` — the DSN without password or parameters, but
    ``host`` and ``port`` (``?host=/run/pg``): they say where."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    if parts.scheme not in _SCHEMES or not dsn.startswith(f"{parts.scheme}://"):
        return "<DSN without a postgresql:// scheme>"
    if "@" in dsn.partition("://")[2][len(parts.netloc) :]:
        return "<unparsable DSN>"  # an unescaped "/" before an "@": part of a password
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    who = f"{user}@" if user else ""
    # A socket directory (?host=/run/pg) or a port given as a parameter says where.
    where = "&".join(f"{k}={v}" for k, v in parse_qsl(parts.query) if k in _WHERE_PARAMS)
    return f"{parts.scheme}://{who}{hosts}{parts.path}{'?' + where if where else ''}"


def dsn_secrets(dsn: str) -> set[str]:
    """Every span of ``dsn`` that may be a password, in the forms it could be printed in.

    After the scheme (or from the start, without one), for each ``@``: what follows the
    first ``:`` before it, whole and cut at each ``/ ? # @`` (where a parser may have cut
    it); and the ``password=`` values of the query string and of libpq ``key=value``.
    """
    rest = dsn.partition("://")[2] or dsn
    found: set[str] = set()
    for at in (index for index, char in enumerate(rest) if char == "@"):
        password = rest[:at].partition(":")[2]
        found |= {password, *_PASSWORD_CUTS.split(password)}
    found |= {value for key, value in parse_qsl(dsn.partition("?")[2]) if key == "password"}
    found |= {match.strip("'") for match in _KEYWORD_PASSWORD.findall(dsn)}
    found |= {unquote(value) for value in found}
    return {value for value in found if value}


def redact(message: str, dsn: str) -> str:
    """``message`` with every password of ``dsn`` replaced by ``***``."""
    for secret in sorted(dsn_secrets(dsn), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


@contextmanager
def connect_errors(dsn: str) -> Iterator[None]:
    """Turn the driver's connection failures into ``InvalidDsn``/``DatabaseUnavailable``."""
    try:
        yield
    except MALFORMED as exc:
        reason = redact(str(exc), dsn)
        raise InvalidDsn(f"malformed DSN ({dsn_label(dsn)}): {reason}") from None
    except UNREACHABLE as exc:
        reason = redact(str(exc) or type(exc).__name__, dsn)
        message = f"cannot connect to the database ({dsn_label(dsn)}): {reason}"
        raise DatabaseUnavailable(message) from None


def _check_port(dsn: str) -> None:
    """asyncpg wraps an out-of-range port around instead of refusing it."""
    for host in urlsplit(dsn).netloc.rpartition("@")[2].split(","):
        port = urlsplit(f"//{host}").port  # raises ValueError: "Port out of range 0-65535"
        if port == 0:
            raise ValueError("Port out of range 1-65535")


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    with connect_errors(dsn):
        _check_port(dsn)
        return await asyncpg.connect(dsn, **options)


async def create_pool(dsn: str, **options: Any) -> asyncpg.Pool:
    with connect_errors(dsn):
        _check_port(dsn)
        return await asyncpg.create_pool(dsn, **options)


async def keep_session(_conn: asyncpg.Connection) -> None:
    """Pool ``reset`` hook for connections whose statements leave no session state
    behind (the client's and the worker's own): released without the reset round trip.
    The driver still rolls back an open transaction and drops listeners."""
