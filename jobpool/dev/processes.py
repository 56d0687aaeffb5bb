"""The worker processes of ``jobpool dev``: started, watched, restarted, stopped.

:class:`WorkerProcesses` keeps one worker process per ordinal ``0..R-1`` of the ring
(the supervisor, ``jobpool.dev.session``, tells it ``R`` and when to stop). Each is a
``python -m jobpool worker --ordinal i`` (:class:`WorkerProcess`) in its own process
group, with the DSN and a fresh incarnation in its environment. Its output (stdout and
stderr) is appended to ``<logs>/worker-<i>.log`` and forwarded, line by line, to the
terminal.

A worker beyond the ring gets SIGTERM (it finishes its running jobs), then SIGKILL if
it still runs ``KILL_AFTER_S`` later. A worker that exits on its own is restarted after
a backoff (``RESTART_BACKOFF_S``; back to the first delay once it had run for
``HEALTHY_AFTER_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from jobpool.dev.view import Output

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_AFTER_S = 60.0
WORKER_DRAIN_S = 30.0
"""The workers' default ``--drain-timeout``: how long a SIGTERM-ed worker may take."""
KILL_AFTER_S = WORKER_DRAIN_S + 15.0
"""After SIGTERM, a worker still running this much later gets SIGKILL."""


@dataclass(eq=False)
class WorkerProcess:
    """One worker process the supervisor started."""

    ordinal: int
    incarnation: str
    process: asyncio.subprocess.Process
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @classmethod
    async def start(
        cls, ordinal: int, command: list[str], *, dsn: str, log_path: Path
    ) -> WorkerProcess:
        """Run ``command`` as the worker of ``ordinal``, its output to be read by :meth:`wait`."""
        incarnation = uuid.uuid4().hex
        env = {
            **os.environ,
            # The DSN goes through the environment: a command line is visible to `ps`.
            "JOBPOOL_DSN": dsn,
            # The worker's incarnation (see `jobpool worker`): lets the table match
            # each process with its heartbeat row.
            "POD_UID": incarnation,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("POD_NAME", None)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            # Its own process group: Ctrl-C in the terminal reaches the supervisor only,
            # which then stops the workers one SIGTERM each.
            process_group=0,
        )
        return cls(ordinal, incarnation, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def kill_later(self, out: Output) -> None:
        """SIGKILL the worker if it still runs ``KILL_AFTER_S`` from now."""
        await asyncio.sleep(KILL_AFTER_S)
        if self.running:
            out.event(
                f"worker {self.ordinal} (pid {self.pid}) still runs {KILL_AFTER_S:.0f} s "
                "after SIGTERM: SIGKILL"
            )
            self.signal(signal.SIGKILL)

    async def wait(self, out: Output) -> int:
        """Forward the worker's output until it exits; its exit code."""
        pump = asyncio.ensure_future(self._pump(out))
        code = await self.process.wait()
        with contextlib.suppress(TimeoutError):
            # A grandchild holding the pipe open must not keep us waiting.
            await asyncio.wait_for(asyncio.shield(pump), 2.0)
        pump.cancel()
        return code

    async def _pump(self, out: Output) -> None:
        """Copy the worker's output to its log file and, line by line, to the terminal."""
        stream = self.process.stdout
        assert stream is not None
        pending = b""
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} worker {self.ordinal} pid {self.pid} ---\n".encode())
            while chunk := await stream.read(65536):
                log.write(chunk)
                log.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    out.worker_line(self.ordinal, line.decode(errors="replace").rstrip())
            if pending:
                out.worker_line(self.ordinal, pending.decode(errors="replace").rstrip())


class WorkerProcesses:
    """One worker process per ordinal of the ring; see the module docstring."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        *,
        dsn: str,
        logs: Path,
        out: Output,
        on_exit: Callable[[], None],
    ) -> None:
        self.command = command
        self.dsn = dsn
        self.logs = logs
        self.out = out
        self.on_exit = on_exit
        self.processes: dict[int, WorkerProcess] = {}
        self.incarnations: set[str] = set()  # of every process started, to know our rows
        self.restart_at: dict[int, float] = {}  # ordinal -> monotonic time of its restart
        self.failures: dict[int, int] = {}  # ordinal -> exits without a healthy run between
        self.replicas = 0  # the ring, as of the last reconcile
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.processes.values() if w.running]

    async def reconcile(self, replicas: int) -> None:
        """Start the ordinals of the ring that do not run; stop the ones beyond it."""
        if self.stopping:
            return
        self.replicas = replicas
        now = time.monotonic()
        for ordinal in range(replicas):
            if ordinal not in self.processes and self.restart_at.get(ordinal, 0.0) <= now:
                self.restart_at.pop(ordinal, None)
                await self.start(ordinal)
        for ordinal in [o for o in self.restart_at if o >= replicas]:
            del self.restart_at[ordinal]
        for worker in list(self.processes.values()):
            if worker.ordinal >= replicas and not worker.stopping:
                self.out.event(
                    f"worker {worker.ordinal} (pid {worker.pid}) is beyond the ring: SIGTERM"
                )
                self.stop(worker)

    async def start(self, ordinal: int) -> None:
        log_path = self.logs / f"worker-{ordinal}.log"
        worker = await WorkerProcess.start(
            ordinal, self.command(ordinal), dsn=self.dsn, log_path=log_path
        )
        self.processes[ordinal] = worker
        self.incarnations.add(worker.incarnation)
        self.out.event(f"worker {ordinal} started (pid {worker.pid}, log {log_path})")
        self._spawn(self._watch(worker))

    def stop(self, worker: WorkerProcess) -> None:
        """SIGTERM: the worker drains; SIGKILL if it is still there after ``KILL_AFTER_S``."""
        if worker.stopping:
            return
        worker.stopping = True
        worker.signal(signal.SIGTERM)
        self._spawn(worker.kill_later(self.out))

    def stop_all(self) -> None:
        """Stop every worker, and start none any more."""
        self.stopping = True
        if self.processes:
            self.out.event(
                f"stopping {len(self.processes)} workers: they finish their running jobs "
                "(Ctrl-C again kills them)"
            )
        for worker in list(self.processes.values()):
            self.stop(worker)

    def kill_all(self) -> None:
        """SIGKILL the workers that still run, without waiting for them to drain."""
        alive = self.alive()
        if alive:
            self.out.event(f"killing {len(alive)} workers (SIGKILL)")
        for worker in alive:
            worker.signal(signal.SIGKILL)

    async def close(self) -> None:
        """The session is over: SIGKILL whatever still runs, cancel the watching."""
        for worker in list(self.processes.values()):
            worker.signal(signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Forward the worker's output until it exits; then restart it if it should run."""
        code = await worker.wait(self.out)
        if self.processes.get(worker.ordinal) is worker:
            del self.processes[worker.ordinal]
        self.on_exit()
        how = _exit_description(code)
        if worker.stopping or self.stopping:
            self.out.event(f"worker {worker.ordinal} (pid {worker.pid}) stopped ({how})")
            return
        ran = time.monotonic() - worker.started
        failures = 0 if ran >= HEALTHY_AFTER_S else self.failures.get(worker.ordinal, 0)
        self.failures[worker.ordinal] = failures + 1
        delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        if worker.ordinal < self.replicas:
            self.restart_at[worker.ordinal] = time.monotonic() + delay
            self.out.event(
                f"worker {worker.ordinal} (pid {worker.pid}) exited unexpectedly ({how}) "
                f"after {ran:.1f} s: restarting it in {delay:.0f} s (log {worker.log_path})"
            )
        else:
            self.out.event(f"worker {worker.ordinal} (pid {worker.pid}) exited ({how})")


def _exit_description(code: int) -> str:
    """How a process ended, from its return code: ``exit code 1``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
