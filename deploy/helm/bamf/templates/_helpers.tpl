{{/*
Names, labels, images, ports, and the checks every render runs first.
*/}}

{{- define "bamf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name; kept short enough that "<fullname>-bridge-headless" and per-pod names fit in 63. */}}
{{- define "bamf.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bamf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "bamf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bamf.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component: (dict "ctx" $ "component" "api") */}}
{{- define "bamf.labels" -}}
helm.sh/chart: {{ include "bamf.chart" .ctx }}
{{ include "bamf.selectorLabels" . }}
app.kubernetes.io/part-of: bamf
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "bamf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bamf.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of one BAMF binary: (dict "ctx" $ "binary" "bamf-api") */}}
{{- define "bamf.image" -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .ctx.Values.image.repository) .binary (default .ctx.Chart.AppVersion .ctx.Values.image.tag) -}}
{{- end -}}

{{- define "bamf.postgresImage" -}}
{{- printf "%s:%s" .Values.postgresql.image.repository .Values.postgresql.image.tag -}}
{{- end -}}

{{- define "bamf.redisImage" -}}
{{- printf "%s:%s" .Values.redis.image.repository .Values.redis.image.tag -}}
{{- end -}}

{{/* Fixed container ports of the binaries (the bridge's are its TOML's listen addresses). */}}
{{- define "bamf.bridge.frontPort" -}}8443{{- end -}}
{{- define "bamf.bridge.peerPort" -}}8444{{- end -}}
{{- define "bamf.bridge.metricsPort" -}}9090{{- end -}}

{{- define "bamf.apiServiceName" -}}{{ include "bamf.fullname" . }}-api{{- end -}}
{{- define "bamf.apiUrl" -}}https://{{ include "bamf.apiServiceName" . }}:{{ .Values.api.port }}{{- end -}}
{{- define "bamf.bridgeHeadlessName" -}}{{ include "bamf.fullname" . }}-bridge-headless{{- end -}}

{{/* Secret names and keys, wherever a value may come from the chart or an existing Secret. */}}
{{- define "bamf.secrets.api" -}}{{ include "bamf.fullname" . }}-api{{- end -}}
{{- define "bamf.secrets.bridge" -}}{{ default (printf "%s-bridge-join" (include "bamf.fullname" .)) .Values.bridge.existingSecret }}{{- end -}}
{{- define "bamf.secrets.bridgeKey" -}}{{ if .Values.bridge.existingSecret }}{{ .Values.bridge.existingSecretKey }}{{ else }}BAMF_JOIN_TOKEN{{ end }}{{- end -}}
{{- define "bamf.secrets.agent" -}}{{ default (printf "%s-agent-join" (include "bamf.fullname" .)) .Values.agent.existingSecret }}{{- end -}}
{{- define "bamf.secrets.agentKey" -}}{{ if .Values.agent.existingSecret }}{{ .Values.agent.existingSecretKey }}{{ else }}BAMF_JOIN_TOKEN{{ end }}{{- end -}}
{{- define "bamf.secrets.database" -}}{{ default (include "bamf.secrets.api" .) .Values.postgresql.external.existingSecret }}{{- end -}}
{{- define "bamf.secrets.databaseKey" -}}{{ if .Values.postgresql.external.existingSecret }}{{ .Values.postgresql.external.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}{{- end -}}
{{- define "bamf.secrets.redis" -}}{{ default (include "bamf.secrets.api" .) .Values.redis.external.existingSecret }}{{- end -}}
{{- define "bamf.secrets.redisKey" -}}{{ if .Values.redis.external.existingSecret }}{{ .Values.redis.external.existingSecretKey }}{{ else }}REDIS_URL{{ end }}{{- end -}}
{{- define "bamf.secrets.admin" -}}{{ default (include "bamf.secrets.api" .) .Values.admin.existingSecret }}{{- end -}}
{{- define "bamf.secrets.adminKey" -}}{{ if .Values.admin.existingSecret }}{{ .Values.admin.existingSecretKey }}{{ else }}BAMF_ADMIN_PASSWORD{{ end }}{{- end -}}
{{- define "bamf.secrets.caEncryption" -}}{{ default (include "bamf.secrets.api" .) .Values.ca.encryptionKeyExistingSecret }}{{- end -}}
{{- define "bamf.secrets.caEncryptionKey" -}}{{ if .Values.ca.encryptionKeyExistingSecret }}{{ .Values.ca.encryptionKeyExistingSecretKey }}{{ else }}BAMF_CA_ENCRYPTION_KEY{{ end }}{{- end -}}
{{- define "bamf.caEncryptionEnabled" -}}{{ if or .Values.ca.encryptionKey .Values.ca.encryptionKeyExistingSecret }}true{{ end }}{{- end -}}

{{/* The Secret holding the CA certificate and key (tls.crt, tls.key). */}}
{{- define "bamf.ca.secretName" -}}
{{- if eq .Values.ca.provider "existing" -}}
{{- .Values.ca.existingSecret -}}
{{- else -}}
{{- include "bamf.fullname" . }}-ca
{{- end -}}
{{- end -}}

{{/*
The volume that gives bridges, agents and the API the CA *certificate* only, as ca.crt:
the chart's ConfigMap for a generated CA, else the single key tls.crt projected from the CA
Secret (the key, tls.key, is never projected).
*/}}
{{- define "bamf.ca.certVolume" -}}
- name: ca-cert
{{- if eq .Values.ca.provider "generated" }}
  configMap:
    name: {{ include "bamf.fullname" . }}-ca-cert
    items:
      - key: ca.crt
        path: ca.crt
{{- else }}
  secret:
    secretName: {{ include "bamf.ca.secretName" . }}
    defaultMode: 0444
    items:
      - key: tls.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Topology spread of one component: (dict "ctx" $ "component" "bridge") */}}
{{- define "bamf.topologySpread" -}}
{{- if .ctx.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .ctx.Values.topologySpread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ .ctx.Values.topologySpread.hostname }}
    labelSelector:
      matchLabels:
        {{- include "bamf.selectorLabels" . | nindent 8 }}
  - maxSkew: {{ .ctx.Values.topologySpread.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ .ctx.Values.topologySpread.zone }}
    labelSelector:
      matchLabels:
        {{- include "bamf.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling fields of one component's values: (dict "ctx" $ "values" .Values.api) */}}
{{- define "bamf.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "bamf.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A value the chart keeps across upgrades: the given one, else what the live Secret already
holds under that key (lookup; empty in `helm template`), else a new random one.
(dict "ctx" $ "secret" name "key" key "value" given "length" n)
*/}}
{{- define "bamf.keep" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace .secret | default dict -}}
{{- $old := dig "data" .key "" $live -}}
{{- if $old -}}
{{- b64dec $old -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks that make a bad combination of values fail the render with a clear message. */}}
{{- define "bamf.validate" -}}
{{- if not .Values.apiHost }}{{ fail "apiHost is required: the public host name of the API, e.g. --set apiHost=bamf.example.com" }}{{ end }}
{{- if not .Values.tunnelDomain }}{{ fail "tunnelDomain is required: bridges are <n>.bridge.<tunnelDomain>, e.g. --set tunnelDomain=tunnel.example.com" }}{{ end }}
{{- if hasSuffix (printf ".bridge.%s" .Values.tunnelDomain) .Values.apiHost }}{{ fail "apiHost may not be inside the bridge names (*.bridge.<tunnelDomain>)" }}{{ end }}
{{- $pg := .Values.postgresql }}
{{- if and $pg.bundled.enabled (or $pg.external.existingSecret $pg.external.url) }}{{ fail "postgresql: bundled.enabled and external.* are mutually exclusive" }}{{ end }}
{{- if and (not $pg.bundled.enabled) (not $pg.external.existingSecret) (not $pg.external.url) }}{{ fail "postgresql: set external.existingSecret (or external.url), or bundled.enabled=true" }}{{ end }}
{{- if and $pg.external.existingSecret $pg.external.url }}{{ fail "postgresql.external: existingSecret and url are mutually exclusive" }}{{ end }}
{{- $rd := .Values.redis }}
{{- if and $rd.bundled.enabled (or $rd.external.existingSecret $rd.external.url) }}{{ fail "redis: bundled.enabled and external.* are mutually exclusive" }}{{ end }}
{{- if and (not $rd.bundled.enabled) (not $rd.external.existingSecret) (not $rd.external.url) }}{{ fail "redis: set external.existingSecret (or external.url), or bundled.enabled=true" }}{{ end }}
{{- if and $rd.external.existingSecret $rd.external.url }}{{ fail "redis.external: existingSecret and url are mutually exclusive" }}{{ end }}
{{- if and (eq .Values.ca.provider "existing") (not .Values.ca.existingSecret) }}{{ fail "ca.provider=existing needs ca.existingSecret (a kubernetes.io/tls Secret)" }}{{ end }}
{{- if and .Values.ca.encryptionKey .Values.ca.encryptionKeyExistingSecret }}{{ fail "ca: encryptionKey and encryptionKeyExistingSecret are mutually exclusive" }}{{ end }}
{{- if and .Values.admin.password .Values.admin.existingSecret }}{{ fail "admin: password and existingSecret are mutually exclusive" }}{{ end }}
{{- if and .Values.bridge.joinToken .Values.bridge.existingSecret }}{{ fail "bridge: joinToken and existingSecret are mutually exclusive" }}{{ end }}
{{- if and .Values.agent.enabled (not .Values.agent.joinToken) (not .Values.agent.existingSecret) }}{{ fail "agent.enabled needs agent.joinToken or agent.existingSecret (create a join token with the API first)" }}{{ end }}
{{- if and .Values.agent.joinToken .Values.agent.existingSecret }}{{ fail "agent: joinToken and existingSecret are mutually exclusive" }}{{ end }}
{{- if gt (int .Values.bridge.replicas) (int .Values.bridge.maxReplicas) }}{{ fail "bridge.replicas may not exceed bridge.maxReplicas" }}{{ end }}
{{- if and .Values.bridge.autoscaling.enabled (gt (int .Values.bridge.autoscaling.minReplicas) (int .Values.bridge.maxReplicas)) }}{{ fail "bridge.autoscaling.minReplicas may not exceed bridge.maxReplicas" }}{{ end }}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) }}{{ fail "api.autoscaling.minReplicas may not exceed maxReplicas" }}{{ end }}
{{- if and (eq .Values.gateway.provider "istio") (not .Values.gateway.istio.createGateway) (not .Values.gateway.istio.gatewayName) }}{{ fail "gateway.istio.createGateway=false needs gateway.istio.gatewayName" }}{{ end }}
{{- if and .Values.postgresql.backup.enabled (lt (int .Values.postgresql.backup.retentionDays) 1) }}{{ fail "postgresql.backup.retentionDays must be at least 1" }}{{ end }}
{{- end -}}
