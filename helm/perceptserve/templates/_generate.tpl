{{/*
The dataset generation Jobs (generate-job.yaml, generate-merge-job.yaml): names, paths and the
pod both run. Kept apart from the server's helpers; the security contexts and labels are the
server's own named templates.
*/}}
{{- define "perceptserve.generateJobName" -}}
{{- printf "%s-gen-%s" (include "perceptserve.fullname" . | trunc 36 | trimSuffix "-") .Values.generateJob.run }}
{{- end }}

{{/* Where the data claim is mounted, and the run's folders on it. */}}
{{- define "perceptserve.dataPath" -}}/data{{- end }}
{{- define "perceptserve.generateShardsPath" -}}
{{- printf "%s/%s/shards" (include "perceptserve.dataPath" .) .Values.generateJob.run }}
{{- end }}
{{- define "perceptserve.generateMergedPath" -}}
{{- printf "%s/%s/merged" (include "perceptserve.dataPath" .) .Values.generateJob.run }}
{{- end }}

{{/*
Checks the schema cannot express: exactly one of prompts / prompt, classes with a prompt, a data claim.
*/}}
{{- define "perceptserve.validateGenerateJob" -}}
{{- $g := .Values.generateJob }}
{{- if eq (empty $g.prompts) (empty $g.prompt) }}
{{- fail "generateJob: set exactly one of prompts (a file or folder under the data claim) and prompt" }}
{{- end }}
{{- if and $g.prompt (not $g.classes) }}
{{- fail "generateJob.classes: a single prompt needs its class names (the first names the files)" }}
{{- end }}
{{- if not $g.data.claimName }}
{{- fail "generateJob.data.claimName: name the PersistentVolumeClaim the dataset is written to" }}
{{- end }}
{{- end }}

{{/*
The pod spec of a generation Job; call with (dict "root" $ "component" NAME "command" LIST "args" LIST "indexed" BOOL).
*/}}
{{- define "perceptserve.generatePodSpec" -}}
{{- $root := .root }}
{{- $g := $root.Values.generateJob -}}
restartPolicy: Never
serviceAccountName: {{ include "perceptserve.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "perceptserve.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "perceptserve.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command:
      {{- toYaml .command | nindent 6 }}
    args:
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- if .indexed }}
      # Set by the Job controller on Indexed Jobs; declared so that $(JOB_COMPLETION_INDEX) in args expands.
      - name: JOB_COMPLETION_INDEX
        valueFrom:
          fieldRef:
            fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
      {{- end }}
      - name: HOME
        value: /tmp
      - name: PYTHONDONTWRITEBYTECODE
        value: "1"
      - name: PYTHONUNBUFFERED
        value: "1"
    {{- with $g.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "perceptserve.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - name: data
        mountPath: {{ include "perceptserve.dataPath" $root }}
        {{- with $g.data.subPath }}
        subPath: {{ . }}
        {{- end }}
      - name: tmp
        mountPath: /tmp
volumes:
  - name: data
    persistentVolumeClaim:
      claimName: {{ $g.data.claimName }}
  - name: tmp
    emptyDir:
      sizeLimit: 256Mi
{{- end }}
