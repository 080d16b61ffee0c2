{{/* Names and labels. */}}
{{- define "hawser-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hawser-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "hawser-agent.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hawser-agent.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hawser-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hawser-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hawser-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hawser-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hawser
{{- end }}

{{- define "hawser-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret names: the user's existing secret, or the chart's own. */}}

{{- define "hawser-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hawser-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}


{{- define "hawser-agent.tokenSecret" -}}
{{- default (printf "%s-token" (include "hawser-agent.fullname" .)) .Values.token.existingSecret }}
{{- end }}

{{/* Whether the mode impersonates callers, and whether it reviews their cluster tokens. */}}
{{- define "hawser-agent.identity" -}}
{{- if has .Values.mode (list "identity" "both") }}true{{ end }}
{{- end }}
{{- define "hawser-agent.passthrough" -}}
{{- if has .Values.mode (list "passthrough" "both") }}true{{ end }}
{{- end }}

{{/*
The ClusterRole's rules, least privilege: what the agent's start-up check (and `hawser doctor`)
asks for, as the mode and issuers need it (docs/configuration.md, "The agent's credential").
*/}}
{{- define "hawser-agent.rules" -}}
{{- $v := .Values }}
{{- $uids := $v.rbac.impersonateUids }}
{{- $extras := list }}
{{- range $v.rbac.impersonateUserExtras }}{{ $extras = append $extras (printf "userextras/%s" .) }}{{ end }}
{{- $sas := $v.rbac.impersonateServiceAccounts }}
{{- range $v.config.issuers }}
{{- if .uid_claim }}{{ $uids = true }}{{ end }}
{{- range $k, $_ := .extra_claims }}{{ $extras = append $extras (printf "userextras/%s" $k) }}{{ end }}
{{- if .allow_system_names }}{{ $sas = true }}{{ end }}
{{- end }}
{{- if and $v.config.assertions $v.config.assertions.allow_system_names }}{{ $sas = true }}{{ end }}
# The start-up rights check (SelfSubjectAccessReview); granted here, not only by the cluster's
# system:basic-user binding.
- apiGroups: ["authorization.k8s.io"]
  resources: ["selfsubjectaccessreviews"]
  verbs: ["create"]
{{- if include "hawser-agent.identity" . }}
# Impersonating the caller: its name and groups.
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
{{- if $uids }}
- apiGroups: ["authentication.k8s.io"]
  resources: ["uids"]
  verbs: ["impersonate"]
{{- end }}
{{- if $extras }}
# RBAC matches userextras/KEY exactly: one per key.
- apiGroups: ["authentication.k8s.io"]
  resources: {{ $extras | uniq | sortAlpha | toJson }}
  verbs: ["impersonate"]
{{- end }}
{{- if $sas }}
# Callers named system:serviceaccount:NS:NAME.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["impersonate"]
{{- end }}
{{- end }}
{{- if include "hawser-agent.passthrough" . }}
# Reviewing callers' own cluster tokens (passthrough).
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{/* The ports of the relay's addresses (address, tcp_address), for the NetworkPolicy. */}}
{{- define "hawser-agent.relayPorts" -}}
{{- $r := .Values.config.relay }}
{{- $ports := list }}
{{- range $a := list $r.address $r.tcp_address }}
{{- if $a }}{{ $ports = append $ports (trimPrefix ":" (regexFind ":[0-9]+$" $a)) }}{{ end }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}
