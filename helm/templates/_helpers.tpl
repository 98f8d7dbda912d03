{{/*
Names and labels.
*/}}
{{- define "kairos.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kairos.fullname" -}}
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

{{/* A name derived from the fullname: (list $ "suffix"). */}}
{{- define "kairos.child" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "kairos.fullname" $ctx | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kairos.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kairos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kairos.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kairos.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kairos.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kairos
{{- end }}

{{- define "kairos.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "kairos.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kairos.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Where the subcharts put their Services (their own fullname rule).
*/}}
{{- define "kairos.subchartFullname" -}}
{{- $ctx := index . 0 }}{{- $values := index . 1 }}{{- $chart := index . 2 }}
{{- if $values.fullnameOverride }}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default $chart $values.nameOverride }}
{{- if contains $name $ctx.Release.Name }}
{{- $ctx.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" $ctx.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The NATS URL Kairos connects to: the bundled server's Service, or externalNats.url. Never with
credentials: those come from natsAuth, through the Secret.
*/}}
{{- define "kairos.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s://%s:4222" (ternary "tls" "nats" (not (empty .Values.natsTls.secretName))) (include "kairos.subchartFullname" (list . .Values.nats "nats")) }}
{{- else }}
{{- $url := required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url }}
{{- if contains "@" $url }}
{{- fail "externalNats.url must not hold credentials (the ConfigMap holds no secrets): set natsAuth.user/password, natsAuth.token, natsAuth.nkeySeed or natsAuth.existingSecret" }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}

{{/* The ports of the NATS URL(s), for the NetworkPolicy: a JSON list. */}}
{{- define "kairos.natsPorts" -}}
{{- $ports := list }}
{{- range splitList "," (include "kairos.natsUrl" .) }}
{{- $host := (urlParse (trim .)).host }}
{{- $port := regexFind ":[0-9]+$" $host | trimPrefix ":" }}
{{- $ports = append $ports (ternary 4222 (atoi $port) (empty $port)) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/*
kairos.toml, rendered from .Values.config plus what the chart owns. Secrets never: the keys that
hold one are refused here and come from the Secret as KAIROS_* environment variables.
*/}}
{{- define "kairos.configToml" -}}
{{- $owned := dict
  "http.addr" "api.port and api.listenAddress"
  "nats.url" "externalNats.url (or nats.enabled)"
  "nats.user" "natsAuth.user"
  "nats.password" "natsAuth.password"
  "nats.token" "natsAuth.token"
  "nats.nkey_seed" "natsAuth.nkeySeed"
  "nats.creds_file" "natsAuth.credsSecret"
  "nats.tls_ca_file" "natsTls.secretName and natsTls.ca"
  "nats.tls_cert_file" "natsTls.cert"
  "nats.tls_key_file" "natsTls.key"
  "nats.tls_required" "natsTls.required"
  "database.url" "externalDatabase.url, externalDatabase.existingSecret or postgresql.enabled"
  "auth.bootstrap_admin_key" "secrets.bootstrapAdminKey"
  "auth.key_secret" "secrets.keySecret"
  "anomalies.webhook_url" "secrets.anomaliesWebhookUrl"
  "anomalies.webhook_secret" "secrets.anomaliesWebhookSecret"
}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- range $section, $keys := $cfg }}
{{- if not (kindIs "map" $keys) }}
{{- fail (printf "config.%s must be a section: a map of its keys" $section) }}
{{- end }}
{{- range $key, $_ := $keys }}
{{- $full := printf "%s.%s" $section $key }}
{{- if hasKey $owned $full }}
{{- fail (printf "config.%s is set by the chart: use %s" $full (get $owned $full)) }}
{{- end }}
{{- if regexMatch "(secret|password|token|seed|_key$|url$)" $key }}
{{- fail (printf "config.%s looks like a secret, and the ConfigMap holds none: pass it as the environment variable KAIROS_%s_%s from a Secret (api.extraEnv, projectionDefaults.extraEnv)" $full (upper $section) (upper $key)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $http := get $cfg "http" | default dict }}
{{- $_ := set $http "addr" (printf "%s:%d" (include "kairos.listenHost" .) (int .Values.api.port)) }}
{{- $_ := set $cfg "http" $http }}
{{- $nats := get $cfg "nats" | default dict }}
{{- $_ := set $nats "url" (include "kairos.natsUrl" .) }}
{{- with .Values.natsTls }}
{{- if .secretName }}
{{- if .ca }}{{ $_ := set $nats "tls_ca_file" (printf "/etc/kairos/nats-tls/%s" .ca) }}{{ end }}
{{- if or .cert .key }}
{{- if not (and .cert .key) }}{{ fail "natsTls.cert and natsTls.key go together (a client certificate and its key)" }}{{ end }}
{{- $_ := set $nats "tls_cert_file" (printf "/etc/kairos/nats-tls/%s" .cert) }}
{{- $_ := set $nats "tls_key_file" (printf "/etc/kairos/nats-tls/%s" .key) }}
{{- end }}
{{- end }}
{{- if .required }}{{ $_ := set $nats "tls_required" true }}{{ end }}
{{- end }}
{{- if .Values.natsAuth.credsSecret }}
{{- $_ := set $nats "creds_file" (printf "/etc/kairos/nats-creds/%s" .Values.natsAuth.credsKey) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- include "kairos.toml.tables" (dict "path" "" "table" $cfg) }}
{{- end }}

{{- define "kairos.listenHost" -}}
{{- $h := .Values.api.listenAddress | default "0.0.0.0" }}
{{- if contains ":" $h }}{{ printf "[%s]" $h }}{{ else }}{{ $h }}{{ end }}
{{- end }}

{{/*
A small TOML writer. Helm's toToml writes every number from a values file as a float
(max_connections = 20.0), which Kairos' integer keys refuse; this one writes whole numbers as
integers, strings as JSON strings (valid TOML basic strings), maps as [tables], lists of maps as
[[arrays of tables]], other lists inline, and leaves out nulls (so `--set config.x.y=null` unsets).
*/}}
{{- define "kairos.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "kairos.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $all := true }}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{- define "kairos.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "kairos.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- $first := true }}{{ range $k, $e := $v }}{{ if not (kindIs "invalid" $e) }}{{ if not $first }},{{ end }} {{ include "kairos.toml.key" $k }} = {{ include "kairos.toml.value" $e }}{{ $first = false }}{{ end }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write %v (a %s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "kairos.toml.tables" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- range $k, $v := $table }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "kairos.toml.isTableArray" $v)) }}
{{ include "kairos.toml.key" $k }} = {{ include "kairos.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $table }}
{{- $sub := ternary (include "kairos.toml.key" $k) (printf "%s.%s" $path (include "kairos.toml.key" $k)) (empty $path) }}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "kairos.toml.tables" (dict "path" $sub "table" $v) }}
{{- else if include "kairos.toml.isTableArray" $v }}
{{- range $v }}

[[{{ $sub }}]]
{{- include "kairos.toml.tables" (dict "path" $sub "table" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Secrets. Each group (secrets, externalDatabase, natsAuth) reads from its existingSecret when set
(several may name one Secret: the keys differ), else from the Secret the chart makes.
*/}}
{{- define "kairos.secretName" -}}
{{- include "kairos.fullname" . }}
{{- end }}

{{/* The Secret data the chart manages: a dict of key -> value (plain). (list $ "all"|"migrate") */}}
{{- define "kairos.secretData" -}}
{{- $ := index . 0 }}{{- $for := index . 1 }}
{{- $data := dict }}
{{- if and (not $.Values.postgresql.enabled) (not $.Values.externalDatabase.existingSecret) }}
{{- $url := required "externalDatabase.url (or externalDatabase.existingSecret, or postgresql.enabled) is required" $.Values.externalDatabase.url }}
{{- if not (or (hasPrefix "postgres://" $url) (hasPrefix "postgresql://" $url)) }}
{{- fail "externalDatabase.url must start with postgres:// or postgresql://" }}
{{- end }}
{{- $_ := set $data "database-url" $url }}
{{- end }}
{{- if not $.Values.natsAuth.existingSecret }}
{{- with $.Values.natsAuth.user }}{{ $_ := set $data "nats-user" . }}{{ end }}
{{- with $.Values.natsAuth.password }}{{ $_ := set $data "nats-password" . }}{{ end }}
{{- with $.Values.natsAuth.token }}{{ $_ := set $data "nats-token" . }}{{ end }}
{{- with $.Values.natsAuth.nkeySeed }}{{ $_ := set $data "nats-nkey-seed" . }}{{ end }}
{{- end }}
{{- if not $.Values.secrets.existingSecret }}
{{- with $.Values.secrets }}
{{- if and .anomaliesWebhookUrl (not .anomaliesWebhookSecret) }}
{{- fail "secrets.anomaliesWebhookUrl needs secrets.anomaliesWebhookSecret (16 characters or more): Kairos signs every alert it posts" }}
{{- end }}
{{- with .anomaliesWebhookUrl }}{{ $_ := set $data "anomalies-webhook-url" . }}{{ end }}
{{- with .anomaliesWebhookSecret }}{{ $_ := set $data "anomalies-webhook-secret" . }}{{ end }}
{{- if eq $for "all" }}
{{- with .keySecret }}{{ $_ := set $data "auth-key-secret" . }}{{ end }}
{{- $bootstrap := .bootstrapAdminKey }}
{{- if and (not $bootstrap) .generateBootstrapAdminKey }}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (include "kairos.secretName" $) }}
{{- if and $existing $existing.data (hasKey $existing.data "bootstrap-admin-key") }}
{{- $bootstrap = index $existing.data "bootstrap-admin-key" | b64dec }}
{{- else }}
{{- $bootstrap = printf "kairos_%s" (randAlphaNum 48) }}
{{- end }}
{{- end }}
{{- with $bootstrap }}{{ $_ := set $data "bootstrap-admin-key" . }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $data }}
{{- end }}

{{/*
One env var from a Secret: (dict "name" "secret" "key" "optional").
*/}}
{{- define "kairos.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/*
The environment of a Kairos container: (dict "ctx" $ "component" "api"|"projection"|"migrate").
Only KAIROS_CONFIG, KAIROS_BOOTSTRAP_ADMIN_KEY and KAIROS_<SECTION>_<KEY> names of real keys:
Kairos reads every KAIROS_<word>_<word> variable as configuration and refuses unknown ones.
*/}}
{{- define "kairos.env" -}}
{{- $ := .ctx }}{{- $component := .component }}
{{- $managed := include "kairos.secretName" $ }}
{{- if eq $component "migrate" }}{{ $managed = include "kairos.child" (list $ "migrate") }}{{ end }}
{{- $data := include "kairos.secretData" (list $ (ternary "migrate" "all" (eq $component "migrate"))) | fromJson -}}
- name: KAIROS_CONFIG
  value: /etc/kairos/config/kairos.toml
# The same as the ConfigMap's http.addr. The image may set KAIROS_HTTP_ADDR (the Dockerfile does),
# and a variable wins over the file: the container's own wins over the image's.
- name: KAIROS_HTTP_ADDR
  value: {{ printf "%s:%d" (include "kairos.listenHost" $) (int $.Values.api.port) | quote }}
{{- if $.Values.postgresql.enabled }}
{{- $pg := $.Values.postgresql }}
{{- $pgSecret := $pg.auth.existingSecret | default (include "kairos.subchartFullname" (list $ $pg "postgresql")) }}
{{- include "kairos.secretEnv" (dict "name" "POSTGRESQL_PASSWORD" "secret" $pgSecret "key" ($pg.auth.secretKeys.userPasswordKey | default "password")) | nindent 0 }}
- name: KAIROS_DATABASE_URL
  value: {{ printf "postgres://%s:$(POSTGRESQL_PASSWORD)@%s:5432/%s" $pg.auth.username (include "kairos.subchartFullname" (list $ $pg "postgresql")) $pg.auth.database | quote }}
{{- else if $.Values.externalDatabase.existingSecret }}
{{- include "kairos.secretEnv" (dict "name" "KAIROS_DATABASE_URL" "secret" $.Values.externalDatabase.existingSecret "key" $.Values.externalDatabase.existingSecretKey) | nindent 0 }}
{{- else }}
{{- include "kairos.secretEnv" (dict "name" "KAIROS_DATABASE_URL" "secret" $managed "key" "database-url") | nindent 0 }}
{{- end }}
{{- range $key, $var := dict "nats-user" "KAIROS_NATS_USER" "nats-password" "KAIROS_NATS_PASSWORD" "nats-token" "KAIROS_NATS_TOKEN" "nats-nkey-seed" "KAIROS_NATS_NKEY_SEED" }}
{{- if $.Values.natsAuth.existingSecret }}
{{- include "kairos.secretEnv" (dict "name" $var "secret" $.Values.natsAuth.existingSecret "key" $key "optional" true) | nindent 0 }}
{{- else if hasKey $data $key }}
{{- include "kairos.secretEnv" (dict "name" $var "secret" $managed "key" $key) | nindent 0 }}
{{- end }}
{{- end }}
{{- $app := dict "anomalies-webhook-url" "KAIROS_ANOMALIES_WEBHOOK_URL" "anomalies-webhook-secret" "KAIROS_ANOMALIES_WEBHOOK_SECRET" }}
{{- if eq $component "api" }}
{{- $_ := set $app "auth-key-secret" "KAIROS_AUTH_KEY_SECRET" }}
{{- $_ := set $app "bootstrap-admin-key" "KAIROS_BOOTSTRAP_ADMIN_KEY" }}
{{- end }}
{{- range $key, $var := $app }}
{{- if $.Values.secrets.existingSecret }}
{{- include "kairos.secretEnv" (dict "name" $var "secret" $.Values.secrets.existingSecret "key" $key "optional" true) | nindent 0 }}
{{- else if hasKey $data $key }}
{{- include "kairos.secretEnv" (dict "name" $var "secret" $managed "key" $key) | nindent 0 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Volumes and mounts every Kairos container has: the configuration, /tmp, and the NATS TLS files
and credentials when set. (dict "ctx" $ "config" <ConfigMap name>)
*/}}
{{- define "kairos.volumes" -}}
{{- $ := .ctx -}}
- name: config
  configMap:
    name: {{ .config }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with $.Values.natsTls.secretName }}
- name: nats-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- with $.Values.natsAuth.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}

{{- define "kairos.volumeMounts" -}}
- name: config
  mountPath: /etc/kairos/config
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.natsTls.secretName }}
- name: nats-tls
  mountPath: /etc/kairos/nats-tls
  readOnly: true
{{- end }}
{{- if .Values.natsAuth.credsSecret }}
- name: nats-creds
  mountPath: /etc/kairos/nats-creds
  readOnly: true
{{- end }}
{{- end }}

{{/*
What every Kairos pod spec shares: (dict "ctx" $ "serviceAccount" name "settings" <api,
projectionDefaults merged with the module, or migrate>).
*/}}
{{- define "kairos.podCommon" -}}
{{- $ := .ctx }}{{- $s := .settings -}}
serviceAccountName: {{ .serviceAccount }}
automountServiceAccountToken: false
# Kubernetes would give every container KAIROS_SERVICE_HOST, KAIROS_NATS_SERVICE_PORT, … for the
# Services named kairos*, and Kairos reads every KAIROS_<word>_<word> variable as configuration
# (an unknown section or key stops it).
enableServiceLinks: false
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $.Values.podSecurityContext | nindent 2 }}
{{- with $s.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $s.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "kairos.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "kairos.imageTag" .) }}
{{- end }}

{{/* The migrate hooks: pre-install unless a bundled dependency comes up with the release. */}}
{{- define "kairos.migrateHooks" -}}
{{- if .Values.migrate.hooks }}
{{- .Values.migrate.hooks }}
{{- else if or .Values.nats.enabled .Values.postgresql.enabled }}
{{- "post-install,pre-upgrade" }}
{{- else }}
{{- "pre-install,pre-upgrade" }}
{{- end }}
{{- end }}

{{/* The projections: the list merged over projectionDefaults, checked. A JSON list. */}}
{{- define "kairos.projections" -}}
{{- $seen := dict }}
{{- $out := list }}
{{- range $i, $p := .Values.projections }}
{{- if not (kindIs "map" $p) }}
{{- fail (printf "projections[%d] must be a map with a name" $i) }}
{{- end }}
{{- $name := required (printf "projections[%d].name is required" $i) $p.name }}
{{- if not (regexMatch "^[a-z][a-z0-9_-]{0,40}$" $name) }}
{{- fail (printf "projections[%d].name %q is not a projection module name (lower case letters, digits, - and _)" $i $name) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "projections: %s is listed twice; one Deployment runs each projection (scale it with replicas)" $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- $out = append $out (mergeOverwrite (deepCopy $.Values.projectionDefaults) (deepCopy $p)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Pod annotations that roll the pods when their configuration or chart-made Secret changes. */}}
{{- define "kairos.checksums" -}}
checksum/config: {{ include "kairos.configToml" . | sha256sum }}
checksum/secret: {{ omit (include "kairos.secretData" (list . "all") | fromJson) "bootstrap-admin-key" | toJson | sha256sum }}
{{- end }}

{{/*
Egress of every Kairos pod: DNS, NATS, PostgreSQL, and networkPolicy.extraEgress.
*/}}
{{- define "kairos.egressRules" -}}
{{- $np := .Values.networkPolicy -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $np.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    {{- range include "kairos.natsPorts" . | fromJsonArray }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
  {{- if .Values.nats.enabled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ .Values.nats.nameOverride | default "nats" }}
          app.kubernetes.io/instance: {{ .Release.Name }}
  {{- else if $np.natsTo }}
  to:
    {{- toYaml $np.natsTo | nindent 4 }}
  {{- end }}
- ports:
    - port: {{ ternary 5432 (int .Values.externalDatabase.port) .Values.postgresql.enabled }}
      protocol: TCP
  {{- if .Values.postgresql.enabled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ .Values.postgresql.nameOverride | default "postgresql" }}
          app.kubernetes.io/instance: {{ .Release.Name }}
  {{- else if $np.databaseTo }}
  to:
    {{- toYaml $np.databaseTo | nindent 4 }}
  {{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
