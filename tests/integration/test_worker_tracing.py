"""The worker's ``jobpool.process`` span joins the submitter's trace (docs/architecture.md,
"Observability"): it is a child of the ``jobpool.submit`` span, through the W3C
``traceparent`` stored with the job."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jobpool
from jobpool import Client
from jobpool.worker import Worker, WorkerSettings


async def test_process_span_is_a_child_of_the_submit_span(
    dsn: str, client: Client, spans: InMemorySpanExporter
) -> None:
    registry = jobpool.Registry()

    @registry.handler("traced")
    async def traced(payload: object, ctx: jobpool.Context) -> str:
        return trace.get_current_span().get_span_context().trace_id.to_bytes(16, "big").hex()

    worker = Worker(
        WorkerSettings(dsn=dsn, pool=client.pool_name, ordinal=0, metrics_port=None), registry
    )
    running = asyncio.create_task(worker.run())
    try:
        await worker.started()
        with trace.get_tracer("tests").start_as_current_span("request") as request:
            job = await client.submit("traced", {"n": 1})
        handler_trace_id = await client.result(job.id, timeout=10)
    finally:
        worker.stop()
        await running

    trace_id = request.get_span_context().trace_id
    assert handler_trace_id == trace_id.to_bytes(16, "big").hex()
    by_name = {
        span.name: span for span in spans.get_finished_spans() if span.context.trace_id == trace_id
    }
    submit, process = by_name["jobpool.submit"], by_name["jobpool.process"]
    assert process.parent is not None
    assert process.parent.span_id == submit.context.span_id
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["jobpool.job.id"] == str(job.id)
    assert process.attributes["jobpool.job.attempt"] == 1
    assert process.attributes["jobpool.tenant"] == "acme"
