"""``jobpool operator``: run the JobPool operator (kopf) until SIGTERM or Ctrl-C.

Cluster credentials: the pod's service account when running in a cluster, else the
kubeconfig (``--kubeconfig``, else ``$KUBECONFIG`` — a list of files is merged — or
``~/.kube/config``; ``--context`` picks a context).
The same client configuration serves kopf's watches and the operator's own calls.

Database: one per operator (``--dsn`` / ``JOBPOOL_DSN``), shared by every JobPool it
manages; a JobPool's ``database.secretRef`` is what its workers read and must name the
same database. Migrations are applied at start, under their advisory lock.

Scope: ``--namespace NS`` (repeatable, globs allowed) or ``--all-namespaces``.
``--no-cluster-discovery``: no cluster-wide list or watch of CRDs and namespaces (for a
service account that may not make them); globs then match nothing, and CRD changes
need a restart.

Peering: by default the operator joins the kopf peering object ``jobpool``
(``KopfPeering`` in its namespaces, ``ClusterKopfPeering`` with
``--all-namespaces``; the Helm chart installs kopf's peering CRDs and the object).
Replicas of the operator then see each other and all but the one with the highest
priority pause, so two never act at once; each draws a random priority unless
``--priority`` is given (equal priorities would pause them all). Without the peering
CRDs the operator waits, paused. ``--standalone`` turns peering off: for a single
replica, or local development.
"""

from __future__ import annotations

from typing import Annotated

import typer

from jobpool.cli.common import CliError, DsnOption, ExitCode, command, require_dsn, run
from jobpool.cli.logs import LogFormatOption, LogLevelOption, configure_logging

PANEL = "Operator"
DEFAULT_PEERING = "jobpool"
DEFAULT_STATUS_INTERVAL_S = 10.0


@command
def operator_command(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            metavar="NS",
            help="Serve JobPools of this namespace (repeatable; globs like team-* work).",
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve JobPools of every namespace.")
    ] = False,
    standalone: Annotated[
        bool,
        typer.Option("--standalone", help="No peering: only for a single operator replica."),
    ] = False,
    peering: Annotated[
        str, typer.Option(metavar="NAME", help="Name of the kopf peering object.")
    ] = DEFAULT_PEERING,
    priority: Annotated[
        int | None,
        typer.Option(min=1, help="Peering priority; default: random per process."),
    ] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Kubeconfig file; default: in-cluster, else $KUBECONFIG or ~/.kube/config.",
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option(metavar="NAME", help="Kubeconfig context to use.")
    ] = None,
    status_interval: Annotated[
        float,
        typer.Option(
            min=0.5,
            envvar="JOBPOOL_STATUS_INTERVAL",
            help="Seconds between two status updates (and autoscaling decisions) of a pool.",
        ),
    ] = DEFAULT_STATUS_INTERVAL_S,
    cluster_discovery: Annotated[
        bool,
        typer.Option(
            "--cluster-discovery/--no-cluster-discovery",
            help="Watch CRDs (and namespaces) cluster-wide; off: exact namespaces only.",
        ),
    ] = True,
    liveness: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz.",
        ),
    ] = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    dsn: DsnOption = None,
) -> None:
    """Run the JobPool operator: reconcile JobPools into workers, project their status.

    Each JobPool becomes a StatefulSet of workers, a headless Service, a
    PodDisruptionBudget and a ConfigMap (owned by the JobPool); its ring is written to
    Postgres; its status shows the queue, the DLQ, the workers and conditions.
    """
    # kopf and the kubernetes client take a second to import: only for this command.
    from jobpool.operator.context import OperatorConfig, load_configuration
    from jobpool.operator.handlers import run_operator

    if bool(namespace) == all_namespaces:
        raise CliError("pass --namespace NS (one or more) or --all-namespaces", ExitCode.USAGE)
    config = OperatorConfig(dsn=require_dsn(dsn), status_interval_s=status_interval)
    try:
        configuration = load_configuration(kubeconfig=kubeconfig, context=context)
    except Exception as exc:  # the kubernetes package raises several unrelated types
        raise CliError(f"no Kubernetes credentials: {exc}", ExitCode.USAGE) from None
    configure_logging(log_level, log_format)
    run(
        run_operator(
            config,
            configuration,
            namespaces=namespace or (),
            clusterwide=all_namespaces,
            standalone=standalone,
            peering_name=peering,
            priority=priority,
            liveness_endpoint=liveness,
            cluster_discovery=cluster_discovery,
        )
    )


def register(app: typer.Typer) -> None:
    app.command("operator", rich_help_panel=PANEL)(operator_command)
