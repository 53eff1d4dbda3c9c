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

{{/*
Image of one BAMF component: (dict "ctx" $ "image" .Values.api.image). Its registry and tag
default to image.registry and image.tag (then the chart's appVersion); a digest replaces the tag.
*/}}
{{- define "bamf.image" -}}
{{- $g := .ctx.Values.image -}}
{{- $registry := trimSuffix "/" (default $g.registry .image.registry) -}}
{{- $ref := .image.repository -}}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $ref }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.image.tag | default $g.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "bamf.hostname" -}}{{ .Values.gateway.hostname }}{{- end -}}
{{- define "bamf.tunnelDomain" -}}{{ .Values.gateway.tunnelDomain }}{{- end -}}

{{/* The public base URL of the API, as clients type it (the port only when not 443). */}}
{{- define "bamf.publicApiUrl" -}}
{{- if eq (int .Values.gateway.port) 443 -}}
https://{{ .Values.gateway.hostname }}
{{- else -}}
https://{{ .Values.gateway.hostname }}:{{ .Values.gateway.port }}
{{- end -}}
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
{{- define "bamf.secrets.admin" -}}{{ default (include "bamf.secrets.api" .) .Values.admin.existingSecret }}{{- end -}}
{{- define "bamf.secrets.adminKey" -}}{{ if .Values.admin.existingSecret }}{{ .Values.admin.existingSecretKey }}{{ else }}BAMF_ADMIN_PASSWORD{{ end }}{{- end -}}
{{/* The CA sealing key: the given Secret, else the chart's (from ca.encryptionKey, or generated). */}}
{{- define "bamf.secrets.caSealing" -}}{{ default (printf "%s-ca-sealing" (include "bamf.fullname" .)) .Values.ca.encryptionKeyExistingSecret }}{{- end -}}
{{- define "bamf.secrets.caSealingKey" -}}{{ if .Values.ca.encryptionKeyExistingSecret }}{{ .Values.ca.encryptionKeyExistingSecretKey }}{{ else }}BAMF_CA_ENCRYPTION_KEY{{ end }}{{- end -}}

{{/*
Where the PostgreSQL password comes from, as "<secret>/<key>" (empty: no password):
bundled: the chart's <fullname>-postgresql; external: existingSecret, or <fullname>-database
(made by the ExternalSecret, or by the chart from the inline password). (dict "ctx" $ "hook" bool):
a pre-install hook cannot read chart objects, so an inline password comes from the hook's own
Secret <fullname>-migrations.
*/}}
{{- define "bamf.database.passwordRef" -}}
{{- $v := .ctx.Values.postgresql -}}
{{- $fullname := include "bamf.fullname" .ctx -}}
{{- if $v.bundled.enabled -}}
{{ $fullname }}-postgresql/POSTGRES_PASSWORD
{{- else if $v.external.existingSecret -}}
{{ $v.external.existingSecret }}/{{ $v.external.existingSecretKey }}
{{- else if $v.external.externalSecret.enabled -}}
{{ $fullname }}-database/password
{{- else if and $v.external.password .hook -}}
{{ $fullname }}-migrations/password
{{- else if $v.external.password -}}
{{ $fullname }}-database/password
{{- end -}}
{{- end -}}

{{/* Mount path of the external PostgreSQL's CA bundle, when one is given. */}}
{{- define "bamf.database.caFile" -}}
{{- $e := .Values.postgresql.external -}}
{{- if and (not .Values.postgresql.bundled.enabled) (or $e.caSecret $e.caConfigMap) -}}
/etc/bamf/database-ca/{{ $e.caKey }}
{{- end -}}
{{- end -}}

{{/* A PostgreSQL URL for one host: (dict "ctx" $ "host" h "port" p); the password is
$(BAMF_DATABASE_PASSWORD), which Kubernetes expands from the variable set before it. */}}
{{- define "bamf.database.url" -}}
{{- $v := .ctx.Values.postgresql -}}
{{- $withPassword := include "bamf.database.passwordRef" (dict "ctx" .ctx "hook" false) -}}
{{- if $v.bundled.enabled -}}
postgres://{{ $v.bundled.auth.username }}:$(BAMF_DATABASE_PASSWORD)@{{ include "bamf.fullname" .ctx }}-postgresql:5432/{{ $v.bundled.auth.database }}?sslmode=disable
{{- else -}}
{{- $e := $v.external -}}
{{- $query := list (printf "sslmode=%s" $e.sslmode) -}}
{{- with include "bamf.database.caFile" .ctx }}{{ $query = append $query (printf "sslrootcert=%s" .) }}{{ end -}}
postgres://{{ $e.username }}{{ if $withPassword }}:$(BAMF_DATABASE_PASSWORD){{ end }}@{{ .host }}:{{ int .port }}/{{ $e.database }}?{{ join "&" $query }}
{{- end -}}
{{- end -}}

{{/*
The database's environment, in order (a later value refers to an earlier variable):
BAMF_DATABASE_PASSWORD from its Secret, DATABASE_URL, and for the API (dict ... "api" true)
BAMF_DATABASE_READ_URL and BAMF_DATABASE_CA_FILE. (dict "ctx" $ "hook" bool "api" bool)
*/}}
{{- define "bamf.database.env" -}}
{{- $v := .ctx.Values.postgresql -}}
{{- $ref := include "bamf.database.passwordRef" (dict "ctx" .ctx "hook" .hook) -}}
{{- if $ref }}
- name: BAMF_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ dir $ref }}
      key: {{ base $ref }}
{{- end }}
- name: DATABASE_URL
  value: {{ include "bamf.database.url" (dict "ctx" .ctx "host" $v.external.host "port" $v.external.port) | quote }}
{{- if .api }}
{{- if and (not $v.bundled.enabled) $v.external.readReplica.enabled }}
- name: BAMF_DATABASE_READ_URL
  value: {{ include "bamf.database.url" (dict "ctx" .ctx "host" $v.external.readReplica.host "port" $v.external.readReplica.port) | quote }}
{{- end }}
{{- with include "bamf.database.caFile" .ctx }}
- name: BAMF_DATABASE_CA_FILE
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The CA bundle's volume and mount, for the pods that talk to PostgreSQL. */}}
{{- define "bamf.database.caVolume" -}}
{{- $e := .Values.postgresql.external -}}
{{- if include "bamf.database.caFile" . }}
- name: database-ca
  {{- if $e.caSecret }}
  secret:
    secretName: {{ $e.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ $e.caKey }}
        path: {{ $e.caKey }}
  {{- else }}
  configMap:
    name: {{ $e.caConfigMap }}
    items:
      - key: {{ $e.caKey }}
        path: {{ $e.caKey }}
  {{- end }}
{{- end }}
{{- end -}}
{{- define "bamf.database.caMount" -}}
{{- if include "bamf.database.caFile" . }}
- name: database-ca
  mountPath: /etc/bamf/database-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Where the Redis password comes from, as "<secret>/<key>" (empty: none). */}}
{{- define "bamf.redis.passwordRef" -}}
{{- $v := .Values.redis -}}
{{- if $v.bundled.enabled -}}
{{ include "bamf.fullname" . }}-redis/REDIS_PASSWORD
{{- else if $v.external.existingSecret -}}
{{ $v.external.existingSecret }}/{{ $v.external.existingSecretKey }}
{{- else if $v.external.password -}}
{{ include "bamf.fullname" . }}-redis-external/password
{{- end -}}
{{- end -}}

{{/* BAMF_REDIS_PASSWORD (when there is one), then REDIS_URL. */}}
{{- define "bamf.redis.env" -}}
{{- $v := .Values.redis -}}
{{- $ref := include "bamf.redis.passwordRef" . -}}
{{- if $ref }}
- name: BAMF_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ dir $ref }}
      key: {{ base $ref }}
{{- end }}
{{- $auth := ternary ":$(BAMF_REDIS_PASSWORD)@" "" (not (empty $ref)) }}
- name: REDIS_URL
{{- if $v.bundled.enabled }}
  value: "redis://{{ $auth }}{{ include "bamf.fullname" . }}-redis:6379/0?protocol=resp3"
{{- else }}
  value: "{{ ternary "rediss" "redis" $v.external.tls }}://{{ $auth }}{{ $v.external.host }}:{{ int $v.external.port }}/{{ int $v.external.database }}?protocol=resp3"
{{- end }}
{{- end -}}

{{/* The Secret holding the CA certificate and key, and their keys in it. */}}
{{- define "bamf.ca.secretName" -}}
{{- if eq .Values.ca.provider "existing" -}}
{{- .Values.ca.existing.secretName -}}
{{- else -}}
{{- include "bamf.fullname" . }}-ca
{{- end -}}
{{- end -}}
{{- define "bamf.ca.certKey" -}}{{ if eq .Values.ca.provider "existing" }}{{ .Values.ca.existing.certKey }}{{ else }}tls.crt{{ end }}{{- end -}}
{{- define "bamf.ca.keyKey" -}}{{ if eq .Values.ca.provider "existing" }}{{ .Values.ca.existing.keyKey }}{{ else }}tls.key{{ end }}{{- end -}}

{{/*
The volume that gives bridges, agents, tests and the API the CA *certificate* only, as
ca.crt: the chart's ConfigMap for a helm-generated CA, else the certificate's single key
projected from the CA Secret (the private key is never projected).
*/}}
{{- define "bamf.ca.certVolume" -}}
- name: ca-cert
{{- if eq .Values.ca.provider "helm" }}
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
      - key: {{ include "bamf.ca.certKey" . }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* The Secrets with the public certificates (empty: none). */}}
{{- define "bamf.tls.apiSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "bamf.fullname" . }}-api-tls{{- else -}}{{ .Values.tls.existingSecret }}{{- end -}}
{{- end -}}
{{- define "bamf.tls.tunnelSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "bamf.fullname" . }}-tunnel-tls{{- else -}}{{ .Values.tls.existingTunnelSecret }}{{- end -}}
{{- end -}}

{{/* Percent-encodes a value for the userinfo of a URL (what sqlx and redis decode). */}}
{{- define "bamf.urlEncode" -}}{{ . | urlquery | replace "+" "%20" }}{{- end -}}

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
{{- $gw := .Values.gateway }}
{{- if not $gw.hostname }}{{ fail "gateway.hostname is required: the public host name of the API, e.g. --set gateway.hostname=bamf.example.com" }}{{ end }}
{{- if not $gw.tunnelDomain }}{{ fail "gateway.tunnelDomain is required: bridges are <n>.bridge.<tunnelDomain>, e.g. --set gateway.tunnelDomain=tunnel.bamf.example.com" }}{{ end }}
{{- if hasSuffix (printf ".bridge.%s" $gw.tunnelDomain) $gw.hostname }}{{ fail "gateway.hostname may not be inside the bridge names (*.bridge.<tunnelDomain>)" }}{{ end }}
{{- /* Capabilities the values layout has but BAMF has not built yet: refuse, never ignore. */}}
{{- /* Sign-in: password login off needs an enabled single sign-on provider (docs/sso.md). */}}
{{- $enabled := list }}
{{- range $name, $p := .Values.auth.sso.oidc }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$" $name) }}{{ fail (printf "auth.sso.oidc.%s: a provider name is lower-case letters, digits and '-' (it names a volume and a config section)" $name) }}{{ end }}
{{- if $p.enabled }}
{{- $enabled = append $enabled $name }}
{{- if not $p.issuerUrl }}{{ fail (printf "auth.sso.oidc.%s.issuerUrl is required (exactly the issuer of its ID tokens, e.g. https://myorg.us.auth0.com/)" $name) }}{{ end }}
{{- if not $p.existingSecret }}{{ fail (printf "auth.sso.oidc.%s.existingSecret is required: the Secret holding the client secret (key existingSecretKey) and, without clientId, the client id (key clientIdKey)" $name) }}{{ end }}
{{- if $p.clientSecret }}{{ fail (printf "auth.sso.oidc.%s.clientSecret: the chart does not take the client secret inline; put it in a Secret and name it in existingSecret" $name) }}{{ end }}
{{- end }}
{{- end }}
{{- if and (not .Values.auth.local.enabled) (empty $enabled) }}{{ fail "auth.local.enabled=false needs single sign-on: enable a provider under auth.sso.oidc (docs/sso.md)" }}{{ end }}
{{- with .Values.auth.sso.defaultProvider }}{{ if not (has . $enabled) }}{{ fail (printf "auth.sso.defaultProvider=%s is not an enabled provider of auth.sso.oidc" .) }}{{ end }}{{ end }}
{{- if .Values.web.standalone.enabled }}{{ fail "web.standalone.enabled: the web UI is not built yet in BAMF; set web.standalone.enabled=false (the CLI is the client)" }}{{ end }}
{{- $pg := .Values.postgresql }}
{{- $pe := $pg.external }}
{{- if and $pg.bundled.enabled $pe.enabled }}{{ fail "postgresql: bundled.enabled and external.enabled are mutually exclusive" }}{{ end }}
{{- if and (not $pg.bundled.enabled) (not $pe.enabled) }}{{ fail "postgresql: set external.enabled=true (with external.host), or bundled.enabled=true" }}{{ end }}
{{- if $pe.enabled }}
{{- if not $pe.host }}{{ fail "postgresql.external.host is required with postgresql.external.enabled" }}{{ end }}
{{- $sources := 0 }}
{{- if $pe.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if $pe.password }}{{ $sources = add1 $sources }}{{ end }}
{{- if $pe.externalSecret.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt (int $sources) 1 }}{{ fail "postgresql.external: existingSecret, password and externalSecret.enabled are mutually exclusive (pick one)" }}{{ end }}
{{- if and $pe.externalSecret.enabled (or (not $pe.externalSecret.secretStoreRef.name) (not $pe.externalSecret.remoteRef.key)) }}{{ fail "postgresql.external.externalSecret needs secretStoreRef.name and remoteRef.key" }}{{ end }}
{{- if and $pe.caSecret $pe.caConfigMap }}{{ fail "postgresql.external: caSecret and caConfigMap are mutually exclusive" }}{{ end }}
{{- if and $pe.readReplica.enabled (not $pe.readReplica.host) }}{{ fail "postgresql.external.readReplica.host is required with readReplica.enabled" }}{{ end }}
{{- end }}
{{- $rd := .Values.redis }}
{{- $re := $rd.external }}
{{- if and $rd.bundled.enabled $re.enabled }}{{ fail "redis: bundled.enabled and external.enabled are mutually exclusive" }}{{ end }}
{{- if and (not $rd.bundled.enabled) (not $re.enabled) }}{{ fail "redis: set external.enabled=true (with external.host), or bundled.enabled=true" }}{{ end }}
{{- if and $re.enabled (not $re.host) }}{{ fail "redis.external.host is required with redis.external.enabled" }}{{ end }}
{{- if and $re.existingSecret $re.password }}{{ fail "redis.external: existingSecret and password are mutually exclusive" }}{{ end }}
{{- if and (eq .Values.ca.provider "existing") (not .Values.ca.existing.secretName) }}{{ fail "ca.provider=existing needs ca.existing.secretName (a Secret with the CA certificate and key)" }}{{ end }}
{{- if and .Values.ca.encryptionKey .Values.ca.encryptionKeyExistingSecret }}{{ fail "ca: encryptionKey and encryptionKeyExistingSecret are mutually exclusive" }}{{ end }}
{{- $tls := .Values.tls }}
{{- if and $tls.certManager.enabled (or $tls.existingSecret $tls.existingTunnelSecret) }}{{ fail "tls: certManager.enabled and existingSecret/existingTunnelSecret are mutually exclusive" }}{{ end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}{{ fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (e.g. a letsencrypt ClusterIssuer; the wildcard needs DNS-01)" }}{{ end }}
{{- if and .Values.admin.password .Values.admin.existingSecret }}{{ fail "admin: password and existingSecret are mutually exclusive" }}{{ end }}
{{- if and .Values.bridge.joinToken .Values.bridge.existingSecret }}{{ fail "bridge: joinToken and existingSecret are mutually exclusive" }}{{ end }}
{{- if and .Values.bridge.apiRouteProxyProtocol (not .Values.api.trustedProxies) }}{{ fail "bridge.apiRouteProxyProtocol needs api.trustedProxies (the bridges' pod addresses or CIDR blocks)" }}{{ end }}
{{- if and .Values.agent.enabled (not .Values.agent.joinToken) (not .Values.agent.existingSecret) }}{{ fail "agent.enabled needs agent.joinToken or agent.existingSecret (create a join token with the API first)" }}{{ end }}
{{- if and .Values.agent.joinToken .Values.agent.existingSecret }}{{ fail "agent: joinToken and existingSecret are mutually exclusive" }}{{ end }}
{{- $b := .Values.bridge }}
{{- if gt (int $b.replicas) (int $b.maxReplicas) }}{{ fail "bridge.replicas may not exceed bridge.maxReplicas" }}{{ end }}
{{- if and $b.autoscaling.enabled (gt (int $b.autoscaling.minReplicas) (int $b.autoscaling.maxReplicas)) }}{{ fail "bridge.autoscaling.minReplicas may not exceed bridge.autoscaling.maxReplicas" }}{{ end }}
{{- if and $b.autoscaling.enabled (gt (int $b.autoscaling.maxReplicas) (int $b.maxReplicas)) }}{{ fail "bridge.autoscaling.maxReplicas may not exceed bridge.maxReplicas (the per-pod routes rendered)" }}{{ end }}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) }}{{ fail "api.autoscaling.minReplicas may not exceed maxReplicas" }}{{ end }}
{{- if and (eq $gw.provider "istio") (not $gw.istio.createGateway) (not $gw.istio.gatewayName) }}{{ fail "gateway.istio.createGateway=false needs gateway.istio.gatewayName" }}{{ end }}
{{- if and .Values.postgresql.backup.enabled (lt (int .Values.postgresql.backup.retentionDays) 1) }}{{ fail "postgresql.backup.retentionDays must be at least 1" }}{{ end }}
{{- end -}}

{{/* Whether the API gets a sign-in configuration: password login off, or a provider on. */}}
{{- define "bamf.auth.enabled" -}}
{{- $on := not .Values.auth.local.enabled -}}
{{- range $name, $p := .Values.auth.sso.oidc }}{{ if $p.enabled }}{{ $on = true }}{{ end }}{{ end -}}
{{- if $on }}true{{ end -}}
{{- end -}}

{{/* The API's auth.toml (--auth-config) from auth.*: secrets are files mounted from each
provider's existingSecret under /etc/bamf/sso/<name>/, never values here. */}}
{{- define "bamf.auth.toml" -}}
[local]
enabled = {{ .Values.auth.local.enabled }}
break_glass_users = {{ toJson (.Values.auth.local.breakGlassUsers | default list) }}

[sso]
{{- with .Values.auth.sso.defaultProvider }}
default_provider = {{ toJson . }}
{{- end }}
{{- range $name, $p := .Values.auth.sso.oidc }}
{{- if $p.enabled }}

[sso.oidc.{{ $name }}]
issuer_url = {{ toJson $p.issuerUrl }}
{{- if $p.clientId }}
client_id = {{ toJson $p.clientId }}
{{- else }}
client_id_file = "/etc/bamf/sso/{{ $name }}/client_id"
{{- end }}
client_secret_file = "/etc/bamf/sso/{{ $name }}/client_secret"
{{- with $p.scopes }}
scopes = {{ toJson . }}
{{- end }}
{{- with $p.groupsClaim }}
groups_claim = {{ toJson . }}
{{- end }}
{{- with $p.usernameClaims }}
username_claims = {{ toJson . }}
{{- end }}
{{- with $p.algorithms }}
algorithms = {{ toJson . }}
{{- end }}
{{- range $p.roleRules }}

[[sso.oidc.{{ $name }}.role_rules]]
{{- with .claim }}
claim = {{ toJson . }}
{{- end }}
value = {{ toJson .value }}
roles = {{ toJson .roles }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
