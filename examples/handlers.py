"""Example handlers: ``jobpool dev --app examples.handlers:registry``.

Submit to them from another terminal, e.g.::

    jobpool submit send_email '{"to": "ada@example.com", "subject": "hi"}'
    jobpool submit resize_image '{"url": "https://example.com/a.png", "width": 64}'
    jobpool submit flaky '{"fail_times": 2}'
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, Field

import jobpool
from jobpool import Context

registry = jobpool.Registry()


class SendEmail(BaseModel):
    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = ""


@registry.handler("send_email", payload=SendEmail, timeout=10)
async def send_email(payload: SendEmail, ctx: Context) -> dict[str, str]:
    """Pretends to send an email (a few milliseconds of I/O)."""
    await asyncio.sleep(random.uniform(0.005, 0.02))
    return {"sent_to": payload.to, "request_id": ctx.request_id or ""}


class ResizeImage(BaseModel):
    url: str
    width: int = Field(gt=0, le=10_000)


@registry.handler("resize_image", payload=ResizeImage, duration="long", timeout=120)
async def resize_image(payload: ResizeImage, ctx: Context) -> dict[str, int | str]:
    """A longer job that reports its progress in ten steps."""
    for step in range(1, 11):
        await asyncio.sleep(0.2)
        await ctx.report_progress(step / 10, f"step {step} of 10")
    return {"url": payload.url, "width": payload.width}


class Flaky(BaseModel):
    fail_times: int = Field(default=1, ge=0)


@registry.handler("flaky", payload=Flaky, max_attempts=5)
async def flaky(payload: Flaky, ctx: Context) -> str:
    """Fails its first ``fail_times`` attempts (retried with backoff), then succeeds."""
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return f"succeeded on attempt {ctx.attempt}"


@registry.handler("reject")
async def reject(payload: object, ctx: Context) -> None:
    """Always fails for good: the job goes straight to the dead-letter queue."""
    raise jobpool.Permanent(f"rejected payload {payload!r}")


@registry.handler("noop")
async def noop(payload: object, ctx: Context) -> None:
    """Does nothing: for throughput benchmarks."""
