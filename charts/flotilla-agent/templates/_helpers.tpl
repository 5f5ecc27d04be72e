{{/* The chart name, or nameOverride. */}}
{{- define "flotilla-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects. */}}
{{- define "flotilla-agent.fullname" -}}
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

{{- define "flotilla-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "flotilla-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flotilla-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flotilla-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flotilla-agent.caConfigMap" -}}
{{- default (printf "%s-hub-ca" (include "flotilla-agent.fullname" .)) .Values.hub.existingCaConfigMap }}
{{- end }}

{{- define "flotilla-agent.tokenSecret" -}}
{{- default (printf "%s-bootstrap" (include "flotilla-agent.fullname" .)) .Values.bootstrapToken.existingSecret }}
{{- end }}

{{/* The port of metrics.listen (HOST:PORT). */}}
{{- define "flotilla-agent.metricsPort" -}}
{{- $port := .Values.metrics.listen | toString | splitList ":" | last -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "metrics.listen must be HOST:PORT, got %q" (toString .Values.metrics.listen)) -}}
{{- end -}}
{{- $port -}}
{{- end }}
