{{- define "kinesis-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kinesis-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kinesis-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kinesis-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kinesis-operator.labels" -}}
{{ include "kinesis-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kinesis-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kinesis-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /*
Labels of a Prometheus Operator object (ServiceMonitor, PodMonitor, PrometheusRule): the
chart's, `release: RELEASE` (kube-prometheus-stack's default selectors match on `release`),
then the object's extra labels from values, which win (e.g. `release: kube-prometheus-stack`).
Call with (dict "ctx" $ "extra" .Values.metrics.X.labels).
*/}}
{{- define "kinesis-operator.monitorLabels" -}}
{{- $labels := fromYaml (include "kinesis-operator.labels" .ctx) -}}
{{- $_ := set $labels "release" .ctx.Release.Name -}}
{{- toYaml (merge (deepCopy (.extra | default dict)) $labels) -}}
{{- end -}}
