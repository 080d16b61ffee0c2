{{/*
The relay's TOML for one instance (docs/configuration.md, "Relay"). Takes (dict "root" $ "instance" NAME).
What a pod decides (addresses, ports, file paths) is the chart's; every other table comes from
.Values.config as written there, so any documented key can be set and an unknown one stops the
relay at start with a one-line cause (deny_unknown_fields).
*/}}
{{- define "hawser-relay.config" -}}
{{- $ := .root }}{{ $instance := .instance }}
{{- $v := $.Values }}{{ $c := $v.config }}
{{- $full := include "hawser-relay.fullname" $ }}
{{- $state := "/var/lib/hawser" }}
# Rendered by the hawser-relay chart for relay {{ $instance }}; options: docs/configuration.md.
instance = {{ toJson $instance }}
listen = {{ printf "%s:%d" $v.listenAddress (int $v.port) | toJson }}

[tls]
{{- if include "hawser-relay.hasTls" $ }}
cert_file = "/etc/hawser/tls/tls.crt"
key_file = "/etc/hawser/tls/tls.key"
{{- else }}
# No certificate given: one made at start, in the pod's own state (a trial; see the chart's values).
cert_file = "{{ $state }}/tls.crt"
key_file = "{{ $state }}/tls.key"
generate_self_signed = true
self_signed_names = {{ include "hawser.tomlValue" (default (list $full (printf "%s.%s.svc" $full $.Release.Namespace) "localhost") $v.tls.selfSignedNames) }}
{{- end }}
{{- if $c.issuer }}

[issuer]
{{- include "hawser.tomlKeys" $c.issuer }}
{{- if include "hawser-relay.hasKeys" $ }}
signing_key_file = "/etc/hawser/keys/issuer.key"
{{- else }}
signing_key_file = "{{ $state }}/issuer.key"
generate = true
{{- end }}
{{- end }}
{{- if $c.assertions }}

[assertions]
{{- include "hawser.tomlKeys" $c.assertions }}
{{- if include "hawser-relay.hasKeys" $ }}
signing_key_file = "/etc/hawser/keys/assertion.key"
{{- else }}
signing_key_file = "{{ $state }}/assertion.key"
generate = true
{{- end }}
{{- end }}
{{- range $i, $issuer := $c.issuers }}

[[issuers]]
{{- include "hawser.tomlKeys" (omit $issuer "jwks") }}
{{- if $issuer.jwks }}
jwks_file = "/etc/hawser/config/issuer-{{ $i }}.jwks.json"
{{- end }}
{{- end }}
{{- include "hawser.tomlArray" (list "access" $c.access) }}
{{- include "hawser.tomlArray" (list "clusters" $c.clusters) }}
{{- include "hawser.tomlTable" (list "tunnel" $c.tunnel) }}
{{- include "hawser.tomlTable" (list "audit" $c.audit) }}
{{- include "hawser.tomlTable" (list "limits" $c.limits) }}
{{- include "hawser.tomlTable" (list "drain" $c.drain) }}
{{- include "hawser.tomlTable" (list "telemetry" $c.telemetry) }}
{{- if $v.fleet.enabled }}

[registry]
kind = "etcd"
{{- include "hawser.tomlKeys" $v.fleet.registry }}
{{- if $v.fleet.etcdSecret }}
ca_file = "/etc/hawser/etcd/ca.crt"
{{- if $v.fleet.etcdClientCertificate }}
cert_file = "/etc/hawser/etcd/tls.crt"
key_file = "/etc/hawser/etcd/tls.key"
{{- end }}
{{- end }}

[peers]
listen = {{ printf "%s:%d" $v.listenAddress (int $v.fleet.peerPort) | toJson }}
advertise = {{ printf "%s.%s-peers.%s.svc:%d" $instance $full $.Release.Namespace (int $v.fleet.peerPort) | toJson }}
ca_file = "/etc/hawser/fleet/ca.crt"
cert_file = "/etc/hawser/fleet/{{ $instance }}.crt"
key_file = "/etc/hawser/fleet/{{ $instance }}.key"
{{- include "hawser.tomlKeys" $v.fleet.peers }}
{{- end }}

[admin]
listen = {{ printf "%s:%d" $v.listenAddress (int $v.adminPort) | toJson }}
{{ end }}
