{{/*
Names and labels.
*/}}
{{- define "perceptserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perceptserve.fullname" -}}
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

{{- define "perceptserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object (no component: each object adds its own). */}}
{{- define "perceptserve.labels" -}}
helm.sh/chart: {{ include "perceptserve.chart" . }}
app.kubernetes.io/name: {{ include "perceptserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: perceptserve
{{- end }}

{{/*
Selects the server pods only (the component label keeps the helm test pod out of the
Service, the PodDisruptionBudget and the Deployment's selector).
*/}}
{{- define "perceptserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perceptserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "perceptserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "perceptserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The server image: repository@digest when a digest is given, else repository:tag (tag defaults
to the chart's appVersion, the Triton release).
*/}}
{{- define "perceptserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret holding the restricted-API key. */}}
{{- define "perceptserve.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "perceptserve.fullname" .)) .Values.triton.restrictedApi.existingSecret }}
{{- end }}

{{/* Claim holding the TensorRT engine cache (engineCache.type: pvc). */}}
{{- define "perceptserve.engineCacheClaimName" -}}
{{- default (printf "%s-engine-cache" (include "perceptserve.fullname" .)) .Values.engineCache.pvc.existingClaim }}
{{- end }}

{{/*
Fixed paths: the repository layout Triton reads and the engine cache the gpu configs name
(trt_engine_cache_path = /cache/tensorrt/<model>, written by `perceptserve export`).
*/}}
{{- define "perceptserve.modelRepositoryPath" -}}/models{{- end }}
{{- define "perceptserve.engineCachePath" -}}/cache/tensorrt{{- end }}

{{/*
The restricted APIs, their header and the key (from the Secret, never in the pod spec), as
perceptserve.settings reads them: `perceptserve serve` passes them to tritonserver, and a client
(the helm test pod) sends the key. A list of EnvVar objects.
*/}}
{{- define "perceptserve.apiKeyEnv" -}}
{{- $r := .Values.triton.restrictedApi -}}
- name: PERCEPTSERVE_RESTRICTED_APIS
  value: {{ join "," $r.apis | quote }}
- name: PERCEPTSERVE_API_KEY_HEADER
  value: {{ $r.header | quote }}
- name: PERCEPTSERVE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "perceptserve.apiKeySecretName" . }}
      key: {{ $r.secretKey }}
{{- end }}

{{/* Container security context shared by every container of the chart. */}}
{{- define "perceptserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "perceptserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Checks JSON schema draft-07 cannot express (comparisons between values). Included by the
Deployment so that `helm install`, `helm template` and `helm lint` all stop here.
*/}}
{{- define "perceptserve.validate" -}}
{{- $exit := int .Values.triton.exitTimeoutSeconds }}
{{- $drain := int .Values.drainTimeoutSeconds }}
{{- $sleep := int .Values.preStopSleepSeconds }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if le $grace (add $sleep $drain $exit) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds (%d) + drainTimeoutSeconds (%d) + triton.exitTimeoutSeconds (%d): otherwise the kubelet kills the server before in-flight requests finish" $grace $sleep $drain $exit) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)" (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- end }}
{{- $requests := .Values.resources.requests | default dict }}
{{- $limits := .Values.resources.limits | default dict }}
{{- if or (hasKey $requests .Values.gpu.resourceName) (hasKey $limits .Values.gpu.resourceName) }}
{{- fail (printf "set the GPU count with gpu.count, not resources.*[%q]" .Values.gpu.resourceName) }}
{{- end }}
{{- end }}
