{{/*
The RBAC rules of templates/rbac.yaml, one group per purpose.
*/}}

{{/* Rules for the JobPools of one namespace (or of all, in a ClusterRole). */}}
{{- define "jobpool.rbac.poolRules" -}}
# kopf watches the JobPools (list, watch) and keeps its finalizer and progress
# annotations on them (patch); autoscaling patches spec.replicas (patch).
- apiGroups: ["jobpool.dev"]
  resources: ["jobpools"]
  verbs: ["list", "watch", "patch"]
# Status: the CRD has a status subresource, where kopf sends the status part of a patch.
- apiGroups: ["jobpool.dev"]
  resources: ["jobpools/status"]
  verbs: ["patch"]
# kopf.adopt sets blockOwnerDeletion in the children's owner references; clusters with
# the OwnerReferencesPermissionEnforcement admission plugin then ask for this.
- apiGroups: ["jobpool.dev"]
  resources: ["jobpools/finalizers"]
  verbs: ["update"]
# The children, written by server-side apply (patch; create where apply is not served),
# and the StatefulSet's status, read for the JobPool's status (get).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
# The worker pods, listed for the status: which are Ready and not terminating.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events about the JobPools (kopf.event and kopf's own).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* kopf peering; takes (dict "resource" kopfpeerings|clusterkopfpeerings "name" NAME). */}}
{{- define "jobpool.rbac.peeringRules" -}}
# kopf peering: watch the peering objects, write keep-alives into ours.
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource | quote }}]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource | quote }}]
  resourceNames: [{{ .name | quote }}]
  verbs: ["patch"]
{{- end }}

{{/* kopf's discovery watches; takes (dict "namespaced" BOOL). */}}
{{- define "jobpool.rbac.discoveryRules" -}}
# kopf notices new or changed CRDs without a restart.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .namespaced }}
# A namespaced kopf lists and watches namespaces to find the ones it serves.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
