{{/*
Names, labels and the few derived values every template shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "jobpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of object names: fullnameOverride, else <release>-<name> (or <release>). */}}
{{- define "jobpool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects: unique per release namespace too. */}}
{{- define "jobpool.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "jobpool.fullname" .) }}
{{- end }}

{{- define "jobpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The selector shared by the chart's pods: name and instance. */}}
{{- define "jobpool.baseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jobpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the operator's pods, and the selector of its Deployment and Service. */}}
{{- define "jobpool.selectorLabels" -}}
{{ include "jobpool.baseSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the chart, without a component. */}}
{{- define "jobpool.commonLabels" -}}
helm.sh/chart: {{ include "jobpool.chart" . }}
{{ include "jobpool.baseSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jobpool
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "jobpool.labels" -}}
{{ include "jobpool.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "jobpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: repository@digest, else repository:tag (default: appVersion). */}}
{{- define "jobpool.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces a namespaced operator serves, as a JSON list (fromJsonArray). */}}
{{- define "jobpool.namespaces" -}}
{{- if .Values.operator.namespaces }}
{{- toJson .Values.operator.namespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{- define "jobpool.clusterwide" -}}
{{- if eq .Values.operator.scope "cluster" }}true{{ end }}
{{- end }}

{{/* The container env that gives a pod a DSN: (list secretName secretKey). */}}
{{- define "jobpool.dsnEnv" -}}
- name: JOBPOOL_DSN
  valueFrom:
    secretKeyRef:
      name: {{ index . 0 }}
      key: {{ index . 1 }}
{{- end }}

{{/* The Secret of the migration Job's DSN (an owner login): by default the operator's. */}}
{{- define "jobpool.migrationSecretName" -}}
{{- default .Values.database.secretName .Values.database.migrationSecretName }}
{{- end }}

{{- define "jobpool.migrationDsnEnv" -}}
{{- $key := default .Values.database.secretKey .Values.database.migrationSecretKey }}
{{- include "jobpool.dsnEnv" (list (include "jobpool.migrationSecretName" .) $key) }}
{{- end }}

{{/*
The salt of the checksum/database annotation: 32 random characters (crypto/rand) drawn
at the first install and kept in the chart's DSN Secret (key checksum-salt), where
`lookup` finds them again at each upgrade, so the annotation changes only with the DSN.
Kept in the render's values too, so that the Secret and the Deployment see one salt
(the schema refuses this key from users). `helm template` and `--dry-run` have no
cluster: lookup is empty there, and each render draws a new salt.
*/}}
{{- define "jobpool.databaseSalt" -}}
{{- if not (hasKey .Values "__databaseSalt") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.database.secretName }}
{{- $kept := dig "data" "checksum-salt" "" $secret | b64dec }}
{{- $_ := set .Values "__databaseSalt" (default (randAlphaNum 32) $kept) }}
{{- end }}
{{- .Values.__databaseSalt }}
{{- end }}

{{/* sha256 of the salt and the DSN: a new DSN restarts the operator, and a guessed DSN
cannot be confirmed from the Deployment without the Secret's salt. */}}
{{- define "jobpool.databaseChecksum" -}}
{{- printf "%s\n%s" (include "jobpool.databaseSalt" .) .Values.database.dsn | sha256sum }}
{{- end }}

{{/* A writable /tmp on a read-only root filesystem. */}}
{{- define "jobpool.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "jobpool.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
