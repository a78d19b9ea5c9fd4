{{/* Checks the schema cannot make, because they need the release's namespace. */}}
{{- define "jetbridge.validate" -}}
{{- if and .Values.artifacts.claim.enabled (ne (include "jetbridge.stepNamespace" .) .Release.Namespace) }}
{{- fail (printf "artifacts.claim: the server pods (namespace %s) and the step pods (steps.namespace %s) must mount the same claim, and a claim belongs to one namespace: install the release into %s, or leave steps.namespace empty" .Release.Namespace (include "jetbridge.stepNamespace" .) (include "jetbridge.stepNamespace" .)) }}
{{- end }}
{{- if and .Values.cache.claim.enabled (ne (include "jetbridge.stepNamespace" .) .Release.Namespace) (not .Values.cache.claim.existingClaim) }}
{{- fail (printf "cache.claim: the chart makes the cache claim in the release's namespace %s, but step pods run in %s: give cache.claim.existingClaim there, or leave steps.namespace empty" .Release.Namespace (include "jetbridge.stepNamespace" .)) }}
{{- end }}
{{- end }}
