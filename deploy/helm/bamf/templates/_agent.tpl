{{/* agent.toml of the in-cluster agent (see deploy/examples/agent.toml for every key). */}}
{{- define "bamf.agent.toml" -}}
{{- $name := printf "%s-agent" (include "bamf.fullname" .) -}}
{{- $a := .Values.agent -}}
# Rendered by the bamf chart. The join token comes from BAMF_JOIN_TOKEN.
name = {{ default $name $a.name | quote }}
api_url = {{ include "bamf.apiUrl" . | quote }}
api_ca_file = "/etc/bamf/ca/ca.crt"
data_dir = "/var/lib/bamf-agent"
health_listen = "0.0.0.0:{{ $a.healthPort }}"
{{- range $a.targets }}

[[resources]]
name = {{ .name | quote }}
kind = {{ .kind | quote }}
address = {{ .address | quote }}
{{- with .labels }}
{{- $labels := list }}
{{- range $k, $v := . }}
{{- $labels = append $labels (printf "%s = %s" ($k | quote) ($v | toString | quote)) }}
{{- end }}
labels = { {{ join ", " $labels }} }
{{- end }}
{{- end }}
{{- end -}}
