"""``Client.result(timeout=)`` gives up with a ``JobWaitTimeout``: a ``JobpoolError`` (as
every error jobpool raises) and a ``TimeoutError`` (as ``asyncio.wait_for`` would), whose
message names the job, the wait and the job's state."""

from __future__ import annotations

import pytest

from jobpool import Client
from jobpool.errors import JobpoolError, JobWaitTimeout


async def test_result_timeout_is_typed_and_names_the_job_and_the_wait(client: Client) -> None:
    job = await client.submit("email.send", {"to": "ann@example.com"})
    with pytest.raises(JobWaitTimeout) as info:
        await client.result(job.id, timeout=0.25)
    assert isinstance(info.value, JobpoolError)
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == f"timed out after 0.25 s: job {job.id} is still queued"
