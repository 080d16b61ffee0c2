{{/*
The agent's TOML (docs/configuration.md, "Agent"). What a pod decides (cluster, mode, file paths,
the admin listener) is the chart's; every other table comes from .Values.config as written there,
so any documented key can be set and an unknown one stops the agent at start (deny_unknown_fields).
No [apiserver]: in a pod the agent uses its service account (the mounted token and CA).
No instance: it defaults to the pod's name, distinct for every replica.
*/}}
{{- define "hawser-agent.config" -}}
{{- $v := .Values }}{{ $c := $v.config }}
# Rendered by the hawser-agent chart; options: docs/configuration.md.
cluster = {{ toJson $v.cluster }}
mode = {{ toJson $v.mode }}
token_file = "/etc/hawser/token/token"

[relay]
{{- include "hawser.tomlKeys" $c.relay }}
{{- if $v.relayCA }}
ca_file = "/etc/hawser/config/relay-ca.crt"
{{- else if not $c.relay.pinned_key_sha256 }}
ca_file = {{ toJson $v.systemCAFile }}
{{- end }}
{{- if $c.assertions }}

[assertions]
{{- if $c.assertions.jwks }}
{{- /* A pinned key replaces the default jwks_url (the agent takes exactly one source). */}}
{{- include "hawser.tomlKeys" (omit $c.assertions "jwks" "jwks_url") }}
jwks_file = "/etc/hawser/config/assertions.jwks.json"
{{- else }}
{{- include "hawser.tomlKeys" (omit $c.assertions "jwks") }}
{{- if and $c.assertions.jwks_url $v.relayCA (not $c.assertions.jwks_ca_file) }}
jwks_ca_file = "/etc/hawser/config/relay-ca.crt"
{{- end }}
{{- end }}
{{- end }}
{{- range $i, $issuer := $c.issuers }}

[[issuers]]
{{- include "hawser.tomlKeys" (omit $issuer "jwks") }}
{{- if $issuer.jwks }}
jwks_file = "/etc/hawser/config/issuer-{{ $i }}.jwks.json"
{{- end }}
{{- end }}
{{- include "hawser.tomlTable" (list "passthrough" $c.passthrough) }}
{{- include "hawser.tomlTable" (list "tunnel" $c.tunnel) }}
{{- include "hawser.tomlTable" (list "reconnect" $c.reconnect) }}
{{- include "hawser.tomlTable" (list "audit" $c.audit) }}
{{- include "hawser.tomlTable" (list "telemetry" $c.telemetry) }}

[admin]
listen = {{ printf "0.0.0.0:%d" (int $v.adminPort) | toJson }}
{{ end }}
