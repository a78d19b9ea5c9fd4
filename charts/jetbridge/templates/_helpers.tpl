{{/* Names, labels and the values every template derives the same way. */}}

{{- define "jetbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jetbridge.fullname" -}}
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

{{- define "jetbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "jetbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "jetbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jetbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "jetbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jetbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace step pods run in: the release's unless set. */}}
{{- define "jetbridge.stepNamespace" -}}
{{- default .Release.Namespace .Values.steps.namespace }}
{{- end }}

{{- define "jetbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The artifact claim's name, when artifacts live on a claim. */}}
{{- define "jetbridge.artifactClaim" -}}
{{- if .Values.artifacts.claim.existingClaim }}
{{- .Values.artifacts.claim.existingClaim }}
{{- else }}
{{- printf "%s-artifacts" (include "jetbridge.fullname" .) }}
{{- end }}
{{- end }}

{{- define "jetbridge.cacheClaim" -}}
{{- if .Values.cache.claim.existingClaim }}
{{- .Values.cache.claim.existingClaim }}
{{- else }}
{{- printf "%s-cache" (include "jetbridge.fullname" .) }}
{{- end }}
{{- end }}

{{- define "jetbridge.tokenSecret" -}}
{{- default (printf "%s-api-tokens" (include "jetbridge.fullname" .)) .Values.apiTokens.existingSecret }}
{{- end }}

{{- define "jetbridge.varsKeySecret" -}}
{{- default (printf "%s-vars-key" (include "jetbridge.fullname" .)) .Values.varsKey.existingSecret }}
{{- end }}

{{- define "jetbridge.databaseSecret" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.postgresql.enabled }}
{{- include "jetbridge.postgresqlName" . }}
{{- else }}
{{- printf "%s-database" (include "jetbridge.fullname" .) }}
{{- end }}
{{- end }}

{{- define "jetbridge.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "url" }}
{{- end }}
{{- end }}

{{- define "jetbridge.postgresqlName" -}}
{{- printf "%s-postgresql" (include "jetbridge.fullname" .) }}
{{- end }}

{{/* Where the server pod mounts the artifact claim. */}}
{{- define "jetbridge.artifactMount" -}}/var/lib/jetbridge/artifacts{{- end }}

{{/* The volume store the server is given: the bucket URL, or a directory on the claim. */}}
{{- define "jetbridge.volumes" -}}
{{- if .Values.artifacts.bucket.url }}
{{- .Values.artifacts.bucket.url }}
{{- else if .Values.artifacts.claim.enabled }}
{{- $prefix := trimAll "/" .Values.artifacts.claim.prefix }}
{{- if $prefix }}
{{- printf "%s/%s" (include "jetbridge.artifactMount" .) $prefix }}
{{- else }}
{{- include "jetbridge.artifactMount" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations every step pod gets: the GCS FUSE sidecar's, plus the user's. */}}
{{- define "jetbridge.stepPodAnnotations" -}}
{{- $a := dict }}
{{- if .Values.artifacts.claim.gcsFuse.enabled }}
{{- $_ := set $a "gke-gcsfuse/volumes" "true" }}
{{- end }}
{{- range $k, $v := .Values.steps.podAnnotations }}
{{- $_ := set $a $k $v }}
{{- end }}
{{- $list := list }}
{{- range $k, $v := $a }}
{{- $list = append $list (printf "%s=%s" $k $v) }}
{{- end }}
{{- if $list }}{{ toJson $list }}{{ end }}
{{- end }}

{{/* A value kept across upgrades: the live Secret's, else a new random one. */}}
{{- define "jetbridge.keptRandom" -}}
{{- $secret := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $secret (hasKey $secret.data .key) }}
{{- index $secret.data .key | b64dec }}
{{- else }}
{{- randAlphaNum .length }}
{{- end }}
{{- end }}

{{- define "jetbridge.postgresqlSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jetbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: postgresql
{{- end }}

{{/* Whether the server has a database (else its queue and registry are in memory). */}}
{{- define "jetbridge.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret .Values.postgresql.enabled }}true{{ end }}
{{- end }}
