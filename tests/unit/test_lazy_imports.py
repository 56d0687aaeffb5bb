"""A worker process imports only what a worker needs before its first job: not the
client, rich, the other commands, the dev machinery, kopf or kubernetes. ``import
jobpool`` (every handler module does it) loads the public names on first use, and the
``jobpool`` command imports a command's module only when that command is looked up."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import typer
import typer.main

import jobpool
import jobpool.cli
from jobpool.cli import JobpoolGroup, app

NOT_FOR_A_WORKER = (
    "jobpool.client",
    "jobpool.dev",
    "jobpool.operator",
    "jobpool.cli.admin",
    "jobpool.cli.dev",
    "jobpool.cli.dlq",
    "jobpool.cli.output",
    "jobpool.cli.submit",
    "rich",
    "markdown_it",
    "kopf",
    "kubernetes",
)
HANDLERS = """
    import jobpool

    registry = jobpool.Registry()


    @registry.handler("noop")
    async def noop(payload, ctx):
        pass
"""


def loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def modules_after(tmp_path: Path, code: str) -> list[str]:
    """The modules a fresh interpreter holds once ``code`` ran (or exited)."""
    out = tmp_path / "modules.json"
    prologue = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", prologue + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), run.stderr
    modules: list[str] = json.loads(out.read_text())
    return modules


def test_a_worker_imports_no_client_rich_dev_or_operator(tmp_path: Path) -> None:
    """``jobpool worker`` up to its first connection (a port-0 DSN fails right there)."""
    (tmp_path / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    argv = [
        "jobpool",
        "worker",
        "--pool=p",
        "--app=handlers:registry",
        "--ordinal=0",
        "--metrics-port=0",
        "--dsn=postgresql://u@127.0.0.1:0/db",
    ]
    modules = modules_after(tmp_path, f"sys.argv = {argv!r}\nfrom jobpool.cli import main\nmain()")

    assert "jobpool.worker.runtime" in modules  # it did get as far as running a worker
    assert "handlers" in modules
    assert loaded(modules, NOT_FOR_A_WORKER) == []


def test_import_jobpool_loads_the_public_names_on_first_use(tmp_path: Path) -> None:
    bare = modules_after(tmp_path, "import jobpool")
    with_registry = modules_after(tmp_path, "import jobpool\njobpool.Registry")

    assert loaded(bare, ("jobpool.client", "jobpool.worker", "jobpool.models", "pydantic")) == []
    assert "jobpool.worker.registry" in with_registry
    assert loaded(with_registry, ("jobpool.client",)) == []


def test_every_public_name_is_the_object_of_its_module() -> None:
    for name in jobpool.__all__:
        assert name in dir(jobpool)
        assert getattr(jobpool, name) is not None
    assert jobpool.Client is importlib.import_module("jobpool.client").Client
    assert jobpool.Registry is importlib.import_module("jobpool.worker.registry").Registry
    assert jobpool.Priority is importlib.import_module("jobpool.models").Priority
    assert not hasattr(jobpool, "NoSuchName")


def test_the_command_table_names_what_each_module_registers() -> None:
    """A command its module registers but the table lacks would be missing from the CLI."""
    listed: dict[str, set[str]] = {}
    for command, module in JobpoolGroup.modules.items():
        listed.setdefault(module, set()).add(command)
    for module, commands in listed.items():
        own = typer.Typer()
        importlib.import_module(f"jobpool.cli.{module}").register(own)
        assert set(typer.main.get_group(own).commands) == commands, module
    registering = {
        info.name
        for info in pkgutil.iter_modules(jobpool.cli.__path__)
        if hasattr(importlib.import_module(f"jobpool.cli.{info.name}"), "register")
    }
    assert registering == set(listed)
    root = typer.main.get_command(app)
    assert list(root.commands) == list(JobpoolGroup.modules)  # type: ignore[attr-defined]
