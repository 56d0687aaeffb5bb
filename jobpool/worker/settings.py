"""A worker's settings, documented field by field; ``jobpool worker`` fills them from
its options and environment."""

from __future__ import annotations

import uuid
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobpool.models import Priority
from jobpool.worker.backoff import RetryPolicy
from jobpool.worker.scheduler import DEFAULT_WEIGHTS

MIN_LANE_CAPACITY = 256
"""Default floor of a lane's buffer. Claimed jobs wait in it under their shard's lease
(no other worker may run them anyway); a claim of 128 jobs costs the server about
twice one of 16 (measured), so small buffers mostly multiply claims."""


class WorkerSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    dsn: str = Field(description="Postgres DSN; a direct connection (LISTEN needs one)")
    pool: str = Field(description="the pool this worker serves")
    ordinal: int = Field(ge=0, description="StatefulSet ordinal: decides the owned shards")
    incarnation: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="this process' identity: pod UID or a fresh UUID per start",
    )
    concurrency: int = Field(default=16, ge=1, description="handlers running at once")
    lane_prefetch: int = Field(
        default=0,
        ge=0,
        description=(
            "claimed jobs buffered per lane; 0 = max(2 x concurrency, 256). A lane is "
            "refilled when half empty: this sets the size of a drain's claims"
        ),
    )
    lease_ttl_s: float = Field(default=15.0, gt=0, description="shard lease lifetime")
    heartbeat_interval_s: float = Field(
        default=0.0, ge=0, description="lease renewal period; 0 = a third of the TTL"
    )
    orphan_grace_s: float = Field(
        default=0.0,
        ge=0,
        description="how long a shard may stay free or expired before live ordinals "
        "adopt it (its ring owner is missing); 0 = twice the lease TTL",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long in-flight jobs may finish"
    )
    priority_weights: dict[Priority, int] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    metrics_port: int | None = Field(
        default=9100, description="port of /metrics, /healthz, /readyz; None = off"
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="address the metrics port listens on (all, for a pod)"
    )
    completion_batch: int = Field(default=256, ge=1, description="outcomes per write")

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> Self:
        if self.heartbeat_interval_s > self.lease_ttl_s / 3:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be at most a "
                f"third of lease_ttl_s ({self.lease_ttl_s})"
            )
        return self

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_interval_s or self.lease_ttl_s / 3

    @property
    def orphan_grace(self) -> float:
        return self.orphan_grace_s or 2 * self.lease_ttl_s

    @property
    def lane_capacity(self) -> int:
        return self.lane_prefetch or max(2 * self.concurrency, MIN_LANE_CAPACITY)

    @property
    def owner(self) -> str:
        """The lease owner string: ordinal plus incarnation (pod names are reused)."""
        return f"{self.ordinal}:{self.incarnation}"
