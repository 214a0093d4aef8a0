{{/*
Shared helpers. Templates that work on one role take a dict: (dict "root" $ "role" "sts").
*/}}

{{- define "caracal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-wide name; each role's objects append "-<role>" (so at most 50 characters). */}}
{{- define "caracal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "caracal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of one role's objects. */}}
{{- define "caracal.labels" -}}
helm.sh/chart: {{ include "caracal.chart" .root }}
{{ include "caracal.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: caracal
{{- end }}

{{/* Selector labels of one role: its pods, Service, HPA and PDB. */}}
{{- define "caracal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "caracal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "caracal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What each role reads, and nothing more. Each secret key is named after the variable it feeds;
the pod gets the key as the file /run/secrets/caracal/<KEY> and the variable <KEY>_FILE.
  addrEnv:     the listen address variable
  keys:        keys of existingSecrets.keys
  dbPasswords: keys of existingSecrets.dbPasswords
  tokens:      keys of existingSecrets.tokens
  issuer:      reads ISSUER_URL (the accepted `iss`)
  replay:      produces audit events (a replay volume)
*/}}
{{- define "caracal.roleTable" -}}
sts:
  addrEnv: CARACAL_STS_ADDR
  keys: [ZONE_KEK, AUDIT_HMAC_KEY, STREAMS_HMAC_KEY]
  dbPasswords: [CARACAL_STS_DB_PASSWORD]
  tokens: []
  issuer: true
  replay: true
api:
  addrEnv: CARACAL_API_ADDR
  keys: [ZONE_KEK, AUDIT_HMAC_KEY, STREAMS_HMAC_KEY]
  dbPasswords: [CARACAL_API_DB_PASSWORD]
  tokens: [CARACAL_ADMIN_TOKEN, CARACAL_INTERNAL_TOKEN]
  issuer: false
  replay: false
coordinator:
  addrEnv: CARACAL_COORDINATOR_ADDR
  keys: [STREAMS_HMAC_KEY]
  dbPasswords: [CARACAL_COORDINATOR_DB_PASSWORD]
  tokens: [CARACAL_COORDINATOR_TOKEN]
  issuer: true
  replay: false
gateway:
  addrEnv: CARACAL_GATEWAY_ADDR
  keys: [ZONE_KEK, AUDIT_HMAC_KEY, STREAMS_HMAC_KEY]
  dbPasswords: [CARACAL_GATEWAY_DB_PASSWORD]
  tokens: []
  issuer: true
  replay: true
audit:
  addrEnv: CARACAL_AUDIT_ADDR
  keys: [AUDIT_HMAC_KEY]
  dbPasswords: [CARACAL_AUDIT_DB_PASSWORD]
  tokens: [CARACAL_INTERNAL_TOKEN]
  issuer: false
  replay: false
{{- end }}

{{/* One role's row of the table above. */}}
{{- define "caracal.roleSpec" -}}
{{- $table := include "caracal.roleTable" . | fromYaml }}
{{- index $table .role | toYaml }}
{{- end }}

{{/* The values without a usable default; rendering stops with a message naming them. */}}
{{- define "caracal.validate" -}}
{{- $_ := required "issuerUrl is required: the STS's public URL as it appears in iss" .Values.issuerUrl }}
{{- $_ := required "database.url is required: postgres://host:5432/caracal?sslmode=require, without credentials" .Values.database.url }}
{{- if not .Values.redis.existingSecret }}
{{- $_ := required "redis.url (or redis.existingSecret) is required" .Values.redis.url }}
{{- end }}
{{- if hasSuffix "/" .Values.issuerUrl }}
{{- fail "issuerUrl must not end with /" }}
{{- end }}
{{- end }}

{{/* REDIS_URL from the value, or from the Secret when one is named. */}}
{{- define "caracal.redisUrlEnv" -}}
{{- if .Values.redis.existingSecret }}
valueFrom:
  secretKeyRef:
    name: {{ .Values.redis.existingSecret }}
    key: REDIS_URL
{{- else }}
value: {{ .Values.redis.url | quote }}
{{- end }}
{{- end }}

{{/* The environment of one role's container. */}}
{{- define "caracal.env" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $spec := include "caracal.roleSpec" . | fromYaml }}
{{- $cfg := index $root.Values.roles $role }}
- name: CARACAL_MODE
  value: {{ $root.Values.mode | quote }}
- name: {{ $spec.addrEnv }}
  value: {{ printf "0.0.0.0:%v" $cfg.port | quote }}
- name: DATABASE_URL
  value: {{ $root.Values.database.url | quote }}
- name: CARACAL_DB_POOL_MAX
  value: {{ default $root.Values.database.poolMax $cfg.poolMax | quote }}
{{- if and (eq $role "audit") $root.Values.redis.auditUrl }}
{{- /* The ledger reads the audit stream from the producers' audit Redis. */}}
- name: REDIS_URL
  value: {{ $root.Values.redis.auditUrl | quote }}
{{- else }}
- name: REDIS_URL
  {{- include "caracal.redisUrlEnv" $root | trim | nindent 2 }}
{{- end }}
{{- if and $spec.replay $root.Values.redis.auditUrl }}
- name: AUDIT_REDIS_URL
  value: {{ $root.Values.redis.auditUrl | quote }}
{{- end }}
{{- if $spec.issuer }}
- name: ISSUER_URL
  value: {{ $root.Values.issuerUrl | quote }}
{{- end }}
{{- if $spec.replay }}
- name: AUDIT_REPLAY_DIR
  value: /var/lib/caracal/audit-replay
{{- end }}
{{- if eq $role "coordinator" }}
{{- /* Session mandates are verified with the key sets of the STS inside the cluster. */}}
- name: CARACAL_STS_URL
  value: {{ printf "http://%s-sts:%v" (include "caracal.fullname" $root) $root.Values.roles.sts.service.port | quote }}
{{- end }}
{{- if eq $role "api" }}
- name: CARACAL_AUDIT_URL
  value: {{ printf "http://%s-audit:%v" (include "caracal.fullname" $root) $root.Values.roles.audit.service.port | quote }}
{{- end }}
{{- if eq $role "gateway" }}
{{- /* The gateway reads its reload bearer from CARACAL_ADMIN_TOKEN; it gets a token of its own. */}}
- name: CARACAL_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.existingSecrets.tokens }}
      key: GATEWAY_RELOAD_TOKEN
      optional: true
{{- end }}
- name: METRICS_BEARER
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.existingSecrets.tokens }}
      key: METRICS_BEARER
      optional: true
{{- range $key := concat $spec.keys $spec.dbPasswords $spec.tokens }}
- name: {{ $key }}_FILE
  value: /run/secrets/caracal/{{ $key }}
{{- end }}
{{- range $name, $value := $root.Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- range $name, $value := $cfg.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* The projected volume holding exactly the secret keys one role reads (a volumes item). */}}
{{- define "caracal.secretVolume" -}}
{{- $root := .root }}
{{- $spec := include "caracal.roleSpec" . | fromYaml }}
- name: secrets
  projected:
    # Group-readable: the pod's fsGroup owns the files, the container user is in that group.
    defaultMode: 0440
    sources:
      {{- range $source := list (list "keys" $spec.keys) (list "dbPasswords" $spec.dbPasswords) (list "tokens" $spec.tokens) }}
      {{- $keys := index $source 1 }}
      {{- if $keys }}
      - secret:
          name: {{ index $root.Values.existingSecrets (index $source 0) }}
          items:
            {{- range $key := $keys }}
            - key: {{ $key }}
              path: {{ $key }}
            {{- end }}
      {{- end }}
      {{- end }}
{{- end }}

{{/* The replay volume of a producer (a volumes item): an emptyDir, or the role's claim. */}}
{{- define "caracal.replayVolume" -}}
- name: audit-replay
{{- if eq .root.Values.replay.type "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ required (printf "replay.existingClaims.%s is required when replay.type is persistentVolumeClaim" .role) (index .root.Values.replay.existingClaims .role) }}
{{- else if eq .root.Values.replay.type "emptyDir" }}
  emptyDir:
    sizeLimit: {{ .root.Values.replay.sizeLimit }}
{{- else }}
{{- fail "replay.type must be emptyDir or persistentVolumeClaim" }}
{{- end }}
{{- end }}
