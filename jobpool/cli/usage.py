"""How ``jobpool`` reports usage errors and prints usage: one line, plain names.

typer reports a usage error (a missing argument, a bad ``--priority``, an unknown
option) as a usage line, a hint and a box: several lines, where every other failure of
the CLI is one line ``error: …`` on stderr (see ``jobpool.cli.common``). :class:`RootGroup`,
the class of the ``jobpool`` command itself, runs every command in click's
non-standalone mode and reports the usage errors it raises the same way: one line, the
message and where the help is, exit status 2. Running ``jobpool`` or a command group
without arguments still prints the help.

typer's usage line writes a required argument ``{TYPE}`` and its help gives every flag
a ``<bool>`` type; :func:`plain_usage` gives every command the classes of this module,
which write ``TYPE`` and show no type for a flag.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, cast

import typer
from typer.core import TyperCommand, TyperGroup

USAGE_EXIT_CODE = 2
_REQUIRED_ARGUMENT = re.compile(r"^\{(?P<name>[^{}]+)\}(?P<rest>.*)$")


class _PlainParameters:
    """Usage pieces without braces; flags without a type."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [_REQUIRED_ARGUMENT.sub(r"\g<name>\g<rest>", piece) for piece in pieces]

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class PlainCommand(_PlainParameters, TyperCommand):
    """A command whose usage and help use plain names (see the module docstring)."""


class PlainGroup(_PlainParameters, TyperGroup):
    """A command group whose usage and help use plain names."""


class RootGroup(PlainGroup):
    """The ``jobpool`` command: every usage error is one line on stderr, exit status 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except typer.TyperException as exc:
            code = _report(exc)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _report(exc: typer.TyperException) -> int:
    """Print a usage error as one line (the help itself when no arguments were given)."""
    error = cast(Any, exc)
    message: str = error.format_message().strip()
    if not message or "\n" in message:
        # `jobpool` or `jobpool dlq` alone: the help, which rich has already printed.
        if message:
            error.show()
        return int(error.exit_code)
    ctx = getattr(error, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    text = " ".join(message.replace("Value error, ", "").split()).rstrip(".")
    typer.echo(f"error: {text[:1].lower()}{text[1:]}{hint}", err=True)
    return int(getattr(error, "exit_code", USAGE_EXIT_CODE))


def plain_usage(app: typer.Typer) -> None:
    """Give every command registered on ``app`` (and its groups) :class:`PlainCommand`."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainCommand
    for group in app.registered_groups:
        if isinstance(group.typer_instance, typer.Typer):
            plain_usage(group.typer_instance)
