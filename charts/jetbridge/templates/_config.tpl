{{/* The server's config file; its checksum rolls the pods when it changes. */}}
{{- define "jetbridge.config" -}}
backend: kube
data-dir: /var/lib/jetbridge/data
worker-ttl: {{ printf "%ds" (int .Values.server.workerTtlSeconds) }}
abort-grace: {{ printf "%ds" (int .Values.server.abortGraceSeconds) }}
{{- $volumes := include "jetbridge.volumes" . }}
{{- if $volumes }}
volumes:
  path-or-url: {{ $volumes | quote }}
  {{- with .Values.artifacts.bucket }}
  {{- if .url }}
  {{- with .endpoint }}
  endpoint: {{ . | quote }}
  {{- end }}
  {{- with .region }}
  region: {{ . | quote }}
  {{- end }}
  allow-http: {{ .allowHttp }}
  anonymous: {{ .anonymous }}
  {{- end }}
  {{- end }}
{{- end }}
{{- with .Values.database.schema }}
registry:
  schema: {{ . | quote }}
{{- end }}
kube:
  namespace: {{ include "jetbridge.stepNamespace" . | quote }}
  {{- with .Values.steps.serviceAccountName }}
  service-account: {{ . | quote }}
  {{- end }}
  {{- with .Values.steps.imagePullSecrets }}
  image-pull-secrets: {{ toJson . }}
  {{- end }}
  {{- if .Values.steps.nodeSelector }}
  node-selector:
    {{- range $k, $v := .Values.steps.nodeSelector }}
    - {{ printf "%s=%s" $k $v | quote }}
    {{- end }}
  {{- end }}
  {{- with .Values.steps.tolerations }}
  tolerations: {{ toJson . }}
  {{- end }}
  {{- $annotations := include "jetbridge.stepPodAnnotations" . }}
  {{- if $annotations }}
  pod-annotations: {{ $annotations }}
  {{- end }}
  default-cpu: {{ .Values.steps.defaultCpu | quote }}
  default-memory: {{ .Values.steps.defaultMemory | quote }}
  {{- with .Values.steps.helperImage }}
  helper-image: {{ . | quote }}
  {{- end }}
  {{- /* The static step-pod helper comes from this chart's own image. */}}
  step-helper-image: {{ ternary (include "jetbridge.image" .) "" .Values.steps.stepHelper | quote }}
  restricted: {{ .Values.steps.restricted }}
  allow-privileged: {{ .Values.steps.allowPrivileged }}
  {{- if .Values.artifacts.claim.enabled }}
  artifact-claim: {{ include "jetbridge.artifactClaim" . | quote }}
  artifact-claim-prefix: {{ trimAll "/" .Values.artifacts.claim.prefix | quote }}
  {{- end }}
  {{- if .Values.cache.claim.enabled }}
  cache-claim: {{ include "jetbridge.cacheClaim" . | quote }}
  {{- end }}
images:
  {{- /* The built-in `mock` runs in an image on Kubernetes: this chart's own. */}}
  mock-image: {{ default (include "jetbridge.image" .) .Values.images.mockImage | quote }}
  {{- with .Values.images.registryPrefix }}
  registry-prefix: {{ . | quote }}
  {{- end }}
  {{- with .Values.images.defaultTaskImage }}
  default-task-image: {{ . | quote }}
  {{- end }}
  {{- if .Values.images.resourceTypeImages }}
  resource-type-images:
    {{- range $k, $v := .Values.images.resourceTypeImages }}
    - {{ printf "%s=%s" $k $v | quote }}
    {{- end }}
  {{- end }}
server:
  listen: {{ printf "0.0.0.0:%d" (int .Values.service.port) | quote }}
  metrics-listen: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
  api-token-file: /etc/jetbridge/api-tokens/tokens
  vars-key-file: /etc/jetbridge/vars-key/key
  max-builds: {{ int .Values.server.maxBuilds }}
  max-queued: {{ int .Values.server.maxQueued }}
  drain-timeout: {{ printf "%ds" (int .Values.server.drainTimeoutSeconds) }}
  lease-ttl: {{ printf "%ds" (int .Values.server.leaseTtlSeconds) }}
  max-body-bytes: {{ int64 .Values.server.maxBodyBytes }}
{{- end }}
