"""Submit a batch of example jobs with ``jobpool.Client`` and wait for every result.

    JOBPOOL_DSN=postgresql://jobpool@db.example/jobpool \\
        python examples/submit.py --pool emails --count 100

The jobs are ``send_email`` jobs of ``examples/handlers.py`` (run the workers with
``--app examples.handlers:registry``: ``jobpool dev`` locally, a JobPool in a cluster).
The batch is one round trip; each result is awaited through LISTEN/NOTIFY, never by
polling. Exit status: 0 when every job succeeded, 1 when one did not (or the wait timed
out), 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from jobpool import Client
from jobpool.errors import JobCancelled, JobFailed, JobpoolError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("JOBPOOL_DSN"), help="$JOBPOOL_DSN")
    parser.add_argument("--pool", default=os.environ.get("JOBPOOL_POOL", "default"))
    parser.add_argument("--tenant", default=os.environ.get("JOBPOOL_TENANT", "default"))
    parser.add_argument("--count", type=int, default=100, help="jobs in the batch")
    parser.add_argument("--priority", default="normal", help="critical, high, normal or low")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait, in all")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no database: pass --dsn or set JOBPOOL_DSN")
    if args.count < 1:
        parser.error("--count must be at least 1")
    return args


async def submit_and_wait(args: argparse.Namespace) -> dict[str, Any]:
    """Submit ``args.count`` emails in one batch; wait for each; count the outcomes."""
    outcomes: dict[str, Any] = {"succeeded": 0, "failed": 0, "cancelled": 0, "errors": 0}
    outcomes["results"] = []
    async with Client(args.dsn, pool=args.pool, tenant=args.tenant) as jp:
        started = time.monotonic()
        payloads = [
            {"to": f"user{i}@example.com", "subject": f"hello #{i}"} for i in range(args.count)
        ]
        jobs = await jp.submit("send_email", payloads, priority=args.priority)
        print(f"submitted {len(jobs)} jobs to pool {args.pool!r} in one batch", flush=True)

        async def outcome(job_id: Any) -> None:
            try:
                outcomes["results"].append(await jp.result(job_id))
                outcomes["succeeded"] += 1
            except JobFailed as exc:
                outcomes["failed"] += 1
                print(f"failed: {exc}", file=sys.stderr)
            except JobCancelled:
                outcomes["cancelled"] += 1
            except JobpoolError as exc:  # e.g. the database went away while waiting
                outcomes["errors"] += 1
                print(f"error: {exc}", file=sys.stderr)

        async with asyncio.timeout(args.timeout), asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(outcome(job.id))
        outcomes["seconds"] = time.monotonic() - started
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        outcomes = asyncio.run(submit_and_wait(args))
    except TimeoutError:
        print(f"not every job finished within {args.timeout:g} s", file=sys.stderr)
        return 1
    except JobpoolError as exc:  # e.g. PoolNotFound, DatabaseUnavailable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{outcomes['succeeded']} succeeded, {outcomes['failed']} failed, "
        f"{outcomes['cancelled']} cancelled, {outcomes['errors']} errors "
        f"in {outcomes['seconds']:.2f} s"
    )
    if outcomes["results"]:
        print(f"a result: {outcomes['results'][0]}")
    return 0 if outcomes["succeeded"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
