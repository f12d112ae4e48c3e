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
# The SLMDeployments themselves: Kopf watches them and patches metadata (its finalizer and
# last-handled-configuration annotation); update for Kopf's fallback writes.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Status is a subresource: conditions, placement, cache progress, endpoint (kstatus).
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/status"]
  verbs: ["get", "patch", "update"]
# Children carry ownerReferences with blockOwnerDeletion=true; the OwnerReferencesPermissionEnforcement
# admission plugin then requires update on the owner's finalizers subresource.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/finalizers"]
  verbs: ["update"]
# Model cache claims and the runtime Services: created and kept converged by server-side apply;
# deleted when a cache is not retained or a Service is no longer wanted.
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Runtime Deployments: applied, watched for readiness (status.readyReplicas), deleted on cleanup.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Fetch Jobs: applied, watched for completion/failure, deleted (and re-created) when the model changes.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Read-only: fetch and runtime Pods, to report why a fetch failed or a replica is not ready
# (termination messages, waiting reasons). No exec, no logs.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events about placement decisions and failures (Kopf posts core/v1 Events; events.k8s.io for
# clients of the newer API). patch aggregates repeated events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# No Secrets: the operator only puts secretKeyRef names into Pod specs; it never reads them.
{{- end }}

{{/* Kopf peering objects' kind for the scope. */}}
{{- define "slm-operator.peeringRule" -}}
{{- if eq .Values.scope "cluster" }}
# Kopf peering (replicas > 1): operators announce themselves and freeze lower priorities.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- else }}
# Kopf peering (replicas > 1): operators announce themselves and freeze lower priorities.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads, needed in both scopes. */}}
{{- define "slm-operator.clusterRules" -}}
# Node inventory for placement (labels, allocatable devices, taints): a Kopf index over a watch.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# Kopf scans CRDs at start-up and watches them to notice resources added or removed at runtime.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
