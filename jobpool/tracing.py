"""OpenTelemetry glue: the tracer and the W3C ``traceparent`` carried by each job.

jobpool only uses the OpenTelemetry API; exporting is configured by the application
(or by the standard ``OTEL_*`` environment variables with the SDK's auto-configuration).
"""

from __future__ import annotations

from opentelemetry import propagate, trace

tracer = trace.get_tracer("jobpool")


def recording() -> bool:
    """Whether an OpenTelemetry SDK is installed: without one, the API's spans record
    nothing (the worker then starts none)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current_traceparent() -> str | None:
    """The ``traceparent`` header of the current span, or None outside any trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")
