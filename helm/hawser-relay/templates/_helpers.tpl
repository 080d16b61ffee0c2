{{/* Names and labels. */}}
{{- define "hawser-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hawser-relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "hawser-relay.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hawser-relay.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hawser-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hawser-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hawser-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hawser-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hawser
{{- end }}

{{- define "hawser-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret names: the user's existing secret, or the chart's own. */}}
{{- define "hawser-relay.tlsSecret" -}}
{{- default (printf "%s-tls" (include "hawser-relay.fullname" .)) .Values.tls.existingSecret }}
{{- end }}
{{- define "hawser-relay.keysSecret" -}}
{{- default (printf "%s-keys" (include "hawser-relay.fullname" .)) .Values.keys.existingSecret }}
{{- end }}
{{- define "hawser-relay.hasTls" -}}
{{- if or .Values.tls.existingSecret .Values.tls.cert }}true{{ end }}
{{- end }}
{{- define "hawser-relay.hasKeys" -}}
{{- if or .Values.keys.existingSecret .Values.keys.issuerKey .Values.keys.assertionKey }}true{{ end }}
{{- end }}

{{/* The relays' instance names: the StatefulSet's pod names in a fleet, else the release's. */}}
{{- define "hawser-relay.instances" -}}
{{- $full := include "hawser-relay.fullname" . }}
{{- if .Values.fleet.enabled }}
{{- range $i := until (int .Values.replicaCount) }}
- {{ printf "%s-%d" $full $i }}
{{- end }}
{{- else }}
- {{ $full }}
{{- end }}
{{- end }}

{{/*
The seconds Kubernetes waits between the preStop hook and SIGKILL must cover the hook and the
relay's whole drain: grace_secs + timeout_secs + up to 7 s of closing (docs/configuration.md,
Drain), plus a margin.
*/}}
{{- define "hawser-relay.terminationGracePeriod" -}}
{{- $drain := .Values.config.drain | default dict }}
{{- add (int .Values.preStopSleepSeconds) (int (default 0 $drain.grace_secs)) (int (default 30 $drain.timeout_secs)) 7 3 }}
{{- end }}

{{- define "hawser-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hawser-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
