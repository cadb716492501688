{{/* Name of every object: the release name, or release-chart. */}}
{{- define "alarminati.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "alarminati.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "alarminati.labels" -}}
{{ include "alarminati.selectorLabels" . }}
app.kubernetes.io/part-of: alarminati
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Pod Security level the namespace must allow. */}}
{{- define "alarminati.podSecurityLevel" -}}
{{- if or .Values.hostNetwork (eq .Values.persistence.type "hostPath") -}}
privileged
{{- else -}}
restricted
{{- end -}}
{{- end -}}

{{- define "alarminati.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "alarminati.keySecretName" -}}
{{- .Values.keySecret.name | default (printf "%s-key" (include "alarminati.fullname" .)) -}}
{{- end -}}

{{- define "alarminati.receiversSecretName" -}}
{{- .Values.receiversSecret.name | default (printf "%s-receivers" (include "alarminati.fullname" .)) -}}
{{- end -}}

{{/* The agent's config.yaml, from a string or a mapping. */}}
{{- define "alarminati.config" -}}
{{- if kindIs "string" .Values.config -}}
{{- required "config: the agent's configuration is required (--set-file config=config.yaml)" .Values.config -}}
{{- else -}}
{{- toYaml .Values.config -}}
{{- end -}}
{{- end -}}
