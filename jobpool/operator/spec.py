"""The JobPool custom resource (``jobpools.jobpool.dev/v1alpha1``) as pydantic models.

These models are the single source of the resource's shape: ``crd.render_crd()``
derives the CRD's OpenAPI schema from them, and the operator parses every spec it
reconciles with ``parse_spec()``. Both therefore accept and refuse the same specs:

* field constraints (minimum, maximum, pattern, enum, required) live in ``Field(...)``;
* unknown fields are refused (``extra="forbid"``; the API server refuses them too, with
  kubectl's default strict field validation), except in the free-form Kubernetes
  objects ``resources`` and ``env[]`` items;
* cross-field rules are written twice, side by side: as a validator here and as a CEL
  rule (``x-kubernetes-validations``) in the model's schema extra;
* values are parsed strictly (no "5" for 5), as the API server's schema does.

Python names are snake_case, the Kubernetes names their camelCase aliases; both are
accepted on input. ``InvalidSpec`` names the offending field path, e.g.
``spec.autoscaling.maxReplicas: must be at least minReplicas (3)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from jobpool.cron import (
    DEFAULT_TENANT,
    DEFAULT_TIMEZONE,
    MAX_CRON_LENGTH,
    Schedule,
    check_cron,
    check_schedule_payload,
    check_timezone,
)
from jobpool.errors import InvalidInput, InvalidName, InvalidPeriodic
from jobpool.models import JOB_TYPE_PATTERN, POOL_NAME_PATTERN, check_pool_name
from jobpool.store.pause import MAX_PAUSED_TYPES

GROUP = "jobpool.dev"
VERSION = "v1alpha1"
KIND = "JobPool"
PLURAL = "jobpools"
SINGULAR = "jobpool"
SHORT_NAMES = ("jp",)
CATEGORIES = ("all",)

APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
NAME_PATTERN = f"^{POOL_NAME_PATTERN.pattern}$"
MAX_ENV_VARS = 128

OPERATOR_ENV_NAMES = (
    "POD_NAME",
    "POD_UID",
    "JOBPOOL_DSN",
    "JOBPOOL_POOL",
    "JOBPOOL_APP",
    "JOBPOOL_ORDINAL",
    "JOBPOOL_CONCURRENCY",
    "JOBPOOL_LEASE_TTL",
    "JOBPOOL_DRAIN_TIMEOUT",
    "JOBPOOL_PRIORITY_WEIGHTS",
    "JOBPOOL_MAX_ATTEMPTS",
    "JOBPOOL_BACKOFF_BASE",
    "JOBPOOL_BACKOFF_CAP",
    "JOBPOOL_METRICS_PORT",
)
"""Variables the operator sets from the pod and the spec; ``spec.env`` may not set them
(a user's ``POD_NAME`` or ``JOBPOOL_ORDINAL`` would give every pod the same shards)."""

_QUOTED_ENV_NAMES = ", ".join(f"'{name}'" for name in OPERATOR_ENV_NAMES)
ENV_RULE = f"!(self.name in [{_QUOTED_ENV_NAMES}])"
AUTOSCALING_RULE = (
    "!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas"
)
SHARDS_RULE = "self.shards == oldSelf.shards"


class InvalidSpec(InvalidInput):
    """A JobPool spec the operator refuses; ``problems`` holds (field path, message) pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.problems))


def _quantity(value: object) -> object:
    """Kubernetes quantities are int-or-string: ``cpu: 1`` is ``"1"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    ),
]


class _SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class PriorityWeights(_SpecModel):
    """Share of a worker's slots per priority lane when several lanes have work."""

    critical: int = Field(default=4, ge=1, description="Weight of the critical lane.")
    high: int = Field(default=3, ge=1, description="Weight of the high lane.")
    normal: int = Field(default=2, ge=1, description="Weight of the normal lane.")
    low: int = Field(default=1, ge=1, description="Weight of the low lane.")


class RetrySpec(_SpecModel):
    """Default retry policy of the pool (a handler or a job may override it)."""

    max_attempts: int = Field(default=5, ge=1, description="Attempts in all, the first included.")
    backoff_base_seconds: float = Field(
        default=1.0, gt=0, description="Delay before the first retry; doubles per attempt."
    )
    backoff_cap_seconds: float = Field(
        default=300.0, gt=0, description="Longest delay between two attempts."
    )


class SecretKeyRef(_SpecModel):
    """A key of a Secret in the JobPool's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(
        default="dsn", max_length=253, pattern=SECRET_KEY_PATTERN, description="Key in the Secret."
    )


class DatabaseSpec(_SpecModel):
    """Where the workers find the Postgres DSN (never written into the spec itself)."""

    secret_ref: SecretKeyRef = Field(description="Secret key holding the DSN.")


class ResourceRequirements(_SpecModel):
    """The worker container's resources (a Kubernetes ResourceRequirements)."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources.")


class EnvVar(_SpecModel):
    """An environment variable of the worker container (a Kubernetes EnvVar)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-validations": [
                {
                    "rule": ENV_RULE,
                    "message": "is set by the operator from the pod and the spec",
                    "fieldPath": ".name",
                }
            ],
        },
    )

    name: str = Field(min_length=1, max_length=256, description="Variable name.")

    @field_validator("name")
    @classmethod
    def _not_operator_owned(cls, name: str) -> str:
        if name in OPERATOR_ENV_NAMES:
            raise PydanticCustomError(
                "operator_env", "is set by the operator from the pod and the spec"
            )
        return name


class AutoscalingSpec(_SpecModel):
    """Scale the pool between minReplicas and maxReplicas on its backlog."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, description="Most replicas; at least minReplicas.")
    target_queued_per_replica: int = Field(
        default=100, ge=1, description="Queued jobs one replica should have to work through."
    )
    cooldown_seconds: int = Field(
        default=60, ge=0, description="Least time between two scaling decisions."
    )

    @field_validator("max_replicas")
    @classmethod
    def _at_least_min(cls, max_replicas: int, info: ValidationInfo) -> int:
        min_replicas = info.data.get("min_replicas")
        if min_replicas is not None and max_replicas < min_replicas:
            raise PydanticCustomError(
                "min_above_max", "must be at least minReplicas ({min})", {"min": min_replicas}
            )
        return max_replicas


JsonObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
MAX_SCHEDULES = 100


class ScheduleSpec(_SpecModel):
    """A periodic job: a job of ``type`` enqueued once per tick of ``cron``, pool-wide."""

    name: str = Field(
        max_length=128,
        pattern=JOB_TYPE_PATTERN.pattern,
        description="Unique in the pool; names each tick's job (periodic:<name>:<tick>).",
    )
    cron: str = Field(
        min_length=1,
        max_length=MAX_CRON_LENGTH,
        description="Cron expression: 5 fields, or 6 with seconds first (*/10 * * * * *).",
    )
    type: str = Field(
        max_length=128, pattern=JOB_TYPE_PATTERN.pattern, description="Job type enqueued."
    )
    payload: JsonObject = Field(
        default_factory=dict,
        description="Payload of every job (a JSON object).",
        json_schema_extra={"default": {}},
    )
    timezone: str = Field(
        default=DEFAULT_TIMEZONE,
        min_length=1,
        max_length=64,
        description="IANA time zone the cron is read in (DST aware).",
    )
    priority: Literal["critical", "high", "normal", "low"] = Field(
        default="normal", description="Priority of the jobs."
    )
    tenant: str = Field(
        default=DEFAULT_TENANT, min_length=1, max_length=128, description="Tenant of the jobs."
    )
    catch_up: bool = Field(
        default=False,
        description="After downtime, enqueue every missed tick (else only the latest).",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        return _checked(check_cron, cron)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, timezone: str) -> str:
        return _checked(check_timezone, timezone)

    @field_validator("payload")
    @classmethod
    def _payload(cls, payload: Any) -> Any:
        return _checked(check_schedule_payload, payload)

    def schedule(self) -> Schedule:
        """The schedule the operator declares in Postgres."""
        return Schedule.declare(**self.model_dump())


JobTypeName = Annotated[str, Field(max_length=128, pattern=JOB_TYPE_PATTERN.pattern)]


def _checked(check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except InvalidPeriodic as exc:
        raise PydanticCustomError("invalid_schedule", str(exc)) from None


class JobPoolSpec(_SpecModel):
    """One pool of workers: a StatefulSet running one set of job handlers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": SHARDS_RULE,
                    "message": "is immutable: a pool's shard count is fixed at creation",
                    "fieldPath": ".shards",
                },
                {
                    "rule": AUTOSCALING_RULE,
                    "message": "must be at least minReplicas",
                    "fieldPath": ".autoscaling.maxReplicas",
                },
            ]
        }
    )

    replicas: int = Field(default=1, ge=0, description="Worker pods (StatefulSet replicas).")
    image: str = Field(min_length=1, description="Container image holding jobpool and the app.")
    app: str = Field(
        pattern=APP_PATTERN, description="Handlers: a jobpool.Registry, as module:attribute."
    )
    shards: int = Field(
        default=64, ge=1, le=4096, description="Virtual shards; fixed at creation (immutable)."
    )
    priority_weights: PriorityWeights = Field(
        default_factory=PriorityWeights,
        description="Slots per priority lane, in proportion.",
        json_schema_extra={"default": {}},
    )
    concurrency: int = Field(default=16, ge=1, description="Handlers running at once per worker.")
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        description="Default retry policy.",
        json_schema_extra={"default": {}},
    )
    database: DatabaseSpec = Field(description="The Postgres database of the pool.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the worker container."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ENV_VARS,
        description="Extra environment variables of the worker container.",
    )
    drain_timeout_seconds: int = Field(
        default=30, ge=0, description="On shutdown, how long running jobs may take to finish."
    )
    lease_ttl_seconds: int = Field(
        default=15, ge=1, description="Shard lease lifetime; renewed every third of it."
    )
    metrics_port: int = Field(
        default=9100, ge=1, le=65535, description="Port of /metrics, /healthz and /readyz."
    )
    dlq_retention_days: int = Field(
        default=14, ge=1, description="Replayed dead-letter entries are purged after this."
    )
    history_retention_days: int = Field(
        default=7,
        ge=1,
        le=3650,
        description="Finished jobs are kept this many days, then their history is dropped.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale on the backlog; replicas is then set by the operator."
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ServiceAccount of the worker pods.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of the worker image."
    )
    schedules: list[ScheduleSpec] = Field(
        default_factory=list,
        max_length=MAX_SCHEDULES,
        description="Periodic jobs, each enqueued once per tick across all replicas.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    paused: bool = Field(
        default=False, description="Workers start no new job of the pool; running jobs finish."
    )
    paused_types: list[JobTypeName] = Field(
        default_factory=list,
        max_length=MAX_PAUSED_TYPES,
        description="Job types held back: their jobs are parked until the type is resumed.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @field_validator("schedules")
    @classmethod
    def _unique_schedule_names(cls, schedules: list[ScheduleSpec]) -> list[ScheduleSpec]:
        names = [s.name for s in schedules]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise PydanticCustomError(
                "duplicate_schedule", "names {names} more than once", {"names": duplicates}
            )
        return schedules


def _list_map(key: str) -> dict[str, Any]:
    """A list whose items are identified by ``key`` (how Kubernetes lists conditions)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class _StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class OrdinalStatus(_StatusModel):
    """One worker ordinal as Postgres sees it."""

    ordinal: int = Field(ge=0, description="StatefulSet ordinal.")
    shards: int = Field(default=0, ge=0, description="Shards it holds leases on.")
    last_heartbeat: datetime | None = Field(default=None, description="Its last heartbeat.")
    running: int = Field(default=0, ge=0, description="Jobs it is running.")
    succeeded: int = Field(default=0, ge=0, description="Jobs it completed.")
    failed: int = Field(default=0, ge=0, description="Attempts that failed on it.")


class ScheduleStatus(_StatusModel):
    """One periodic schedule of the pool, as Postgres sees it."""

    name: str = Field(description="Schedule name.")
    cron: str = Field(description="Cron expression.")
    timezone: str = Field(description="Time zone the cron is read in.")
    source: Literal["code", "spec"] = Field(
        description="Declared by the handler module (code) or spec.schedules (spec)."
    )
    last_tick: datetime | None = Field(default=None, description="The last tick enqueued.")
    next_tick: datetime | None = Field(default=None, description="The tick enqueued next.")


class HistoryStatus(_StatusModel):
    """The pool's finished jobs kept in Postgres, as the last retention pass left them."""

    retention_days: int = Field(ge=1, description="Days finished jobs are kept.")
    dropped_before: datetime | None = Field(
        default=None, description="Jobs of the pool that finished before this are gone."
    )
    partitions: int = Field(ge=0, description="Daily partitions of the history (all pools).")
    maintained_at: datetime = Field(description="When the last retention pass ran.")


class Condition(_StatusModel):
    """A standard Kubernetes condition: Ready, Progressing or Degraded."""

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(default=None, description="Last change.")
    observed_generation: int | None = Field(default=None, description="Generation it describes.")


class JobPoolStatus(_StatusModel):
    """What the operator observed: the workers, the backlog and the conditions."""

    replicas: int = Field(default=0, ge=0, description="Worker pods (scale subresource).")
    ready_replicas: int = Field(default=0, ge=0, description="Ready worker pods.")
    selector: str = Field(default="", description="Label selector of the worker pods.")
    queued: dict[str, int] = Field(default_factory=dict, description="Queued jobs per priority.")
    queued_total: int = Field(default=0, ge=0, description="Queued jobs, all priorities.")
    running: int = Field(default=0, ge=0, description="Jobs running.")
    dlq: int = Field(default=0, ge=0, description="Dead-letter entries not replayed.")
    oldest_queued_seconds: float = Field(
        default=0.0, ge=0, description="Age of the oldest runnable queued job, seconds."
    )
    throughput_per_minute: float = Field(
        default=0.0, ge=0, description="Jobs finished per minute, lately."
    )
    ordinals: list[OrdinalStatus] = Field(
        default_factory=list,
        description="Per worker ordinal: shards, heartbeat, counters.",
        json_schema_extra=_list_map("ordinal"),
    )
    shards_without_live_owner: int = Field(
        default=0,
        ge=0,
        description="Shards free or expired past the orphan grace period (twice the lease "
        "TTL): nobody serves them.",
    )
    adopted_shards: int = Field(
        default=0, ge=0, description="Shards a live ordinal serves for a missing one."
    )
    missing_ordinals: list[int] = Field(
        default_factory=list,
        description="Ordinals whose shards are adopted or unserved (Degraded OrdinalsMissing).",
    )
    schedules: list[ScheduleStatus] = Field(
        default_factory=list,
        description="Periodic schedules: last tick enqueued and next tick.",
        json_schema_extra=_list_map("name"),
    )
    history: HistoryStatus | None = Field(
        default=None, description="Finished jobs kept (spec.historyRetentionDays)."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded.",
        json_schema_extra=_list_map("type"),
    )
    observed_generation: int | None = Field(default=None, description="Last spec seen.")
    ring_version: int | None = Field(default=None, description="Ring version in Postgres.")
    paused: bool = Field(default=False, description="The pool is paused in Postgres.")
    paused_types: list[str] = Field(
        default_factory=list, description="Job types paused in Postgres."
    )
    parked: int = Field(
        default=0, ge=0, description="Jobs of paused types set aside until their type resumes."
    )


def parse_spec(body_spec: Mapping[str, Any] | None) -> JobPoolSpec:
    """Validate a JobPool's ``spec`` (a dict or kopf's ``body.spec``); raise ``InvalidSpec``."""
    if body_spec is None:
        body_spec = {}
    if not isinstance(body_spec, Mapping):
        raise InvalidSpec([("spec", "must be an object")])
    try:
        return JobPoolSpec.model_validate(plain(body_spec))
    except ValidationError as exc:
        raise InvalidSpec([_problem(error) for error in exc.errors()]) from None


def check_name(name: object) -> str:
    """A JobPool's ``metadata.name``: it names the pool in Postgres (a DNS label of at most 50)."""
    try:
        return check_pool_name(name)
    except InvalidName as exc:
        raise InvalidSpec([("metadata.name", str(exc))]) from None


def check_transition(old: JobPoolSpec, new: JobPoolSpec) -> None:
    """The update rules of the CRD's CEL transition rules, for code paths without them."""
    if new.shards != old.shards:
        raise InvalidSpec([("spec.shards", f"is immutable: it was {old.shards}")])


def plain(value: Any) -> Any:
    """Plain dicts and lists from kopf's mapping views (strict validation wants them)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _problem(error: Any) -> tuple[str, str]:
    path = "spec"
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path, error["msg"]
