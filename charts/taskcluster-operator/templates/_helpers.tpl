{{- define "taskcluster-operator.fullname" -}}
{{- if contains "taskcluster-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-taskcluster-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The NetworkPolicies of each TaskCluster admit pods with this name label: keep it fixed. */}}
{{- define "taskcluster-operator.selectorLabels" -}}
app.kubernetes.io/name: taskcluster-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskcluster-operator.labels" -}}
{{ include "taskcluster-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "taskcluster-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "taskcluster-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace to watch, rendered from watchNamespace; empty for all namespaces. */}}
{{- define "taskcluster-operator.watchNamespace" -}}
{{- tpl (.Values.watchNamespace | default "") . | trim -}}
{{- end -}}

{{- define "taskcluster-operator.leaderElection" -}}
{{- if or .Values.leaderElection (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}
