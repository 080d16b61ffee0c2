{{/* Writing Helm values as TOML (the same file in both Hawser charts). */}}
{{/*
One TOML value from a Helm value: strings as JSON strings (valid TOML basic strings), whole
numbers as integers (Helm reads every YAML number as a float), lists as arrays, maps as inline
tables.
*/}}
{{- define "hawser.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "hawser.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ toJson $k }} = {{ include "hawser.tomlValue" (index $v $k) }}{{ end }} }
{{- else -}}{{ fail (printf "a config value of kind %s cannot be written as TOML" (kindOf $v)) }}
{{- end -}}
{{- end }}

{{/* `key = value` lines of a map, in key order; null values are left out (the default applies). */}}
{{- define "hawser.tomlKeys" -}}
{{- range $k := keys . | sortAlpha }}
{{- $v := index $ $k }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "hawser.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* A `[name]` table from a map (nothing when the map is empty or null). Takes (list name map). */}}
{{- define "hawser.tomlTable" -}}
{{- $name := index . 0 }}{{ $t := index . 1 }}
{{- if $t }}

[{{ $name }}]
{{- include "hawser.tomlKeys" $t }}
{{- end }}
{{- end }}

{{/* `[[name]]` tables from a list of maps. Takes (list name list). */}}
{{- define "hawser.tomlArray" -}}
{{- $name := index . 0 }}
{{- range $t := index . 1 }}

[[{{ $name }}]]
{{- include "hawser.tomlKeys" $t }}
{{- end }}
{{- end }}
