#!/usr/bin/env bash
# End-to-end on a kind cluster, the way a platform team and an application team use
# jobpool:
#
#   1. create a kind cluster; build the image (Dockerfile) and load it into kind;
#   2. install a throwaway Postgres (scripts/e2e/postgres.yaml) and the DSN Secret;
#   3. `helm install` the chart (with the migration Job), then `helm test`;
#   4. in an application namespace: the workers' Secret and a JobPool
#      (scripts/e2e/jobpool.yaml), and wait until it is Ready;
#   5. submit a batch with examples/submit.py in a Job and wait for every result;
#   6. scale the JobPool through its scale subresource and wait for the new worker;
#   7. `kubectl describe jobpool`, delete the JobPool, `helm uninstall`;
#   8. delete the cluster (unless KEEP_CLUSTER=1), also on failure, after printing
#      diagnostics.
#
# Needs docker (with a running daemon), kind and kubectl. helm: $HELM, else .bin/helm
# (the copy the chart tests fetch), else helm on PATH. The cluster's kubeconfig goes to
# a temporary file; yours is never touched. Settings (environment):
#   JOBPOOL_E2E_CLUSTER  cluster name (default jobpool-e2e); an existing cluster of that
#                        name is reused and kept
#   JOBPOOL_E2E_TIMEOUT  timeout of each wait (default 300s)
#   KEEP_CLUSTER=1       keep the cluster (and print how to reach it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${JOBPOOL_E2E_CLUSTER:-jobpool-e2e}
TIMEOUT=${JOBPOOL_E2E_TIMEOUT:-300s}
KEEP=${KEEP_CLUSTER:-0}
IMAGE=jobpool:e2e # the tag scripts/e2e/*.yaml name
OPERATOR_NS=jobpool
APP_NS=e2e-apps
RELEASE=jobpool
DSN="postgresql://jobpool:jobpool@postgres.${OPERATOR_NS}.svc:5432/jobpool"

if [[ -z ${HELM:-} ]]; then
    if [[ -x .bin/helm ]]; then HELM=.bin/helm; else HELM=helm; fi
fi

step() { printf '\n==> %s\n' "$*"; }
die() {
    echo "e2e-kind: $*" >&2
    exit 2
}

for tool in docker kind kubectl "$HELM"; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
docker info >/dev/null 2>&1 || die "the docker daemon does not answer"
[[ $TIMEOUT =~ ^[0-9]+s$ ]] || die "JOBPOOL_E2E_TIMEOUT must be seconds, like 300s"

KUBECONFIG=$(mktemp "${TMPDIR:-/tmp}/jobpool-e2e-kubeconfig.XXXXXX")
export KUBECONFIG
delete_cluster=0

diagnose() {
    step "diagnostics"
    kubectl get nodes -o wide || true
    kubectl get jobpools -A -o wide || true
    kubectl get all -n "$OPERATOR_NS" || true
    kubectl get all -n "$APP_NS" || true
    kubectl -n "$APP_NS" describe jobpool e2e || true
    kubectl -n "$OPERATOR_NS" logs "deployment/$RELEASE" --all-containers --tail=200 || true
    kubectl -n "$APP_NS" logs job/submit --tail=100 || true
    kubectl -n "$APP_NS" logs statefulset/e2e --tail=100 || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 60 || true
}

cleanup() {
    local status=$?
    trap - EXIT
    if ((status != 0)); then
        diagnose
    fi
    if ((delete_cluster)) && [[ $KEEP != 1 ]]; then
        step "deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
        rm -f "$KUBECONFIG"
    else
        echo "e2e-kind: cluster $CLUSTER kept; KUBECONFIG=$KUBECONFIG"
    fi
    if ((status == 0)); then
        echo "e2e-kind: PASSED"
    else
        echo "e2e-kind: FAILED (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

# Wait for a Job to complete; fail at once if it fails (kubectl wait would sit until
# its timeout).
wait_job() {
    local namespace=$1 name=$2 deadline=$((SECONDS + ${TIMEOUT%s}))
    while ((SECONDS < deadline)); do
        local state
        state=$(kubectl -n "$namespace" get "job/$name" \
            -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
        case " $state " in
        *" Complete "*) return 0 ;;
        *" Failed "*)
            kubectl -n "$namespace" logs "job/$name" --tail=100 || true
            die "job $name failed"
            ;;
        esac
        sleep 2
    done
    die "job $name did not finish within $TIMEOUT"
}

step "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "reusing the existing cluster $CLUSTER (it is kept)"
    kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
    delete_cluster=1
    kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s
fi

step "build $IMAGE and load it into kind"
docker build --tag "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "Postgres and the operator's DSN Secret (namespace $OPERATOR_NS)"
kubectl create namespace "$OPERATOR_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$OPERATOR_NS" apply -f scripts/e2e/postgres.yaml
kubectl -n "$OPERATOR_NS" rollout status deployment/postgres --timeout="$TIMEOUT"
kubectl -n "$OPERATOR_NS" create secret generic jobpool-database \
    --from-literal=dsn="$DSN" --dry-run=client -o yaml | kubectl apply -f -

step "helm install $RELEASE (with the migration Job), then helm test"
"$HELM" upgrade --install "$RELEASE" charts/jobpool --namespace "$OPERATOR_NS" \
    --set image.repository=jobpool --set image.tag=e2e --set image.pullPolicy=Never \
    --set migration.enabled=true --set operator.statusIntervalSeconds=2 \
    --wait --timeout "$TIMEOUT"
"$HELM" test "$RELEASE" --namespace "$OPERATOR_NS" --logs --timeout "$TIMEOUT"

step "a JobPool in namespace $APP_NS"
kubectl create namespace "$APP_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$APP_NS" create secret generic jobpool-database \
    --from-literal=dsn="$DSN" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$APP_NS" apply -f scripts/e2e/jobpool.yaml
kubectl -n "$APP_NS" wait jobpool/e2e --for=condition=Ready --timeout="$TIMEOUT"
kubectl get jobpools -A

step "submit a batch (examples/submit.py) and wait for every result"
kubectl -n "$APP_NS" delete job submit --ignore-not-found --wait
kubectl -n "$APP_NS" apply -f scripts/e2e/submit-job.yaml
wait_job "$APP_NS" submit
kubectl -n "$APP_NS" logs job/submit

step "scale the JobPool to 3 replicas (scale subresource)"
kubectl -n "$APP_NS" scale jobpool/e2e --replicas=3
kubectl -n "$APP_NS" wait jobpool/e2e --for=jsonpath='{.status.readyReplicas}'=3 \
    --timeout="$TIMEOUT"
kubectl -n "$APP_NS" wait jobpool/e2e --for=condition=Ready --timeout="$TIMEOUT"

step "kubectl describe jobpool"
kubectl get jobpools -A
kubectl -n "$APP_NS" describe jobpool e2e

step "delete the JobPool, helm uninstall"
kubectl -n "$APP_NS" delete jobpool e2e --wait --timeout="$TIMEOUT"
"$HELM" uninstall "$RELEASE" --namespace "$OPERATOR_NS" --wait --timeout "$TIMEOUT"
