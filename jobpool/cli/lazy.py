"""Commands imported when they are looked up, so a command pays only for its own imports.

Each command module of ``jobpool.cli`` has a ``register(app)`` that adds its commands to
a typer app. The ``jobpool`` group does not import them all up front: its ``commands``
is a :class:`LazyCommands` mapping that knows every command's name and module, in the
order of the help, and imports a module, registers it on a typer app of its own (with
the group's settings) and builds its click commands the first time one of its
commands is looked up. ``jobpool worker`` thus imports the worker and the typer
plumbing, not rich, the client, the dev machinery or the operator; ``jobpool --help``
looks every command up and shows the same help as if all were registered up front.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from jobpool.cli.usage import RootGroup, plain_usage

Command = TyperCommand | TyperGroup
Load = Callable[[str], Mapping[str, Command]]


class LazyCommands(MutableMapping[str, Command]):
    """Command name → command; a command's module is imported when it is first read."""

    def __init__(self, modules: Mapping[str, str], load: Load) -> None:
        self._modules = dict(modules)
        self._load = load
        self._loaded: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            self._loaded.update(self._load(self._modules[name]))
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._modules.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._modules[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


class LazyGroup(RootGroup):
    """A root group whose commands are those of ``modules``, imported on first use."""

    package: ClassVar[str]
    """The package of the command modules."""
    modules: ClassVar[Mapping[str, str]]
    """Command name → the module of ``package`` whose ``register(app)`` adds it."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.modules, self._load)  # type: ignore[assignment]

    def _load(self, module: str) -> dict[str, Command]:
        """The commands that ``module`` registers, built as the root's own would be."""
        app = typer.Typer(rich_markup_mode=self.rich_markup_mode)
        importlib.import_module(f"{self.package}.{module}").register(app)
        plain_usage(app)
        built = typer.main.get_group(app).commands
        return {name: cmd for name, cmd in built.items() if isinstance(cmd, Command)}
