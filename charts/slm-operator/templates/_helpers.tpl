{{/* Chart name. */}}
{{- define "slm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already holds the chart name. */}}
{{- define "slm-operator.fullname" -}}
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

{{- define "slm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slm-operator.labels" -}}
helm.sh/chart: {{ include "slm-operator.chart" . }}
{{ include "slm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-operator
{{- end }}

{{- define "slm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slm-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces served in namespace scope, as a list (default: the release namespace). */}}
{{- define "slm-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* Whether Kopf peering is on (more than one operator replica). */}}
{{- define "slm-operator.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{- end }}
{{- end }}

{{/*
Rules on namespaced resources, shared by the ClusterRole (cluster scope) and each Role (namespace
scope). The operator applies children with server-side apply (PATCH), hence patch on each kind.
*/}}
{{- define "slm-operator.namespacedRules" -}}
# Least privilege, proven by tests/k8s/test_rbac.py: every verb below is used by the operator
# (the API server's audit log of a create, update, drift-repair and delete cycle), or its comment
# says why it is needed where the cycle does not exercise it.
# The SLMDeployments themselves: Kopf lists and watches them and the reconciler reads each one.
# Kopf never writes them (event and index handlers only: no finalizer, no annotations), and the
# operator never writes spec.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments"]
  verbs: ["get", "list", "watch"]
# Status is a subresource: conditions, placement, cache progress, endpoint (kstatus), written with
# a JSON patch of the whole status.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion=true; the OwnerReferencesPermissionEnforcement
# admission plugin (when enabled) then requires update on the owner's finalizers subresource.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/finalizers"]
  verbs: ["update"]
# Model cache claims, runtime Services and Deployments: watched (Kopf), read, and created and kept
# converged by server-side apply: a PATCH, which the API server also authorizes as create when it
# creates the object. They are removed by the garbage collector through their ownerReferences,
# never by the operator (no delete, no update).
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Fetch Jobs: applied (server-side apply), watched for completion/failure, and deleted to retry a
# failed fetch (exponential backoff).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Read-only: a fetch Job's Pods are listed (by job-name) once per outcome, for the fetcher's
# termination message, and while it runs, for its progress. No get, watch or exec.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Read-only: the last lines of a running fetch Pod's log (its progress lines: bytes, total, rate)
# become status.cache, which `slm pull` shows as a progress bar.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Events about placement decisions and failures: the reconciler (and Kopf, for warnings) POSTs
# core/v1 Events, each with a name of its own; nothing patches or aggregates them.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# No Secrets: the operator only puts Secret names into Pod specs (secretKeyRef, secret volumes); it never reads them.
{{- end }}

{{/* Kopf peering objects' kind for the scope. */}}
{{- define "slm-operator.peeringRule" -}}
{{- if eq .Values.scope "cluster" }}
# Kopf peering (replicas > 1): operators list and watch the peering object and announce themselves
# (patch its status); lower priorities freeze.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- else }}
# Kopf peering (replicas > 1): operators list and watch the peering object and announce themselves
# (patch its status); lower priorities freeze.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads, needed in both scopes. */}}
{{- define "slm-operator.clusterRules" -}}
# Node inventory for placement (labels, allocatable devices, taints): a Kopf index over a watch.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# Kopf lists CRDs at start-up and watches them to notice resources added or removed at runtime.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
