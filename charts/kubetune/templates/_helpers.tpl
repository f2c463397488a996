{{/* Names and labels shared by every template. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, else the release name, with the chart name appended
unless the release name already contains it ("kubetune" stays "kubetune", "ml" becomes "ml-kubetune").
Truncated to 50 characters so suffixes such as "-metrics" keep names within the 63 of a DNS label.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {registry, repository, tag, digest}; call with (dict "image" ... "root" $). */}}
{{- define "kubetune.imageRef" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}{{- $repo = printf "%s/%s" $img.registry $img.repository -}}{{- end -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $repo $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* The Service trainers send progress reports to. */}}
{{- define "kubetune.reportsServiceName" -}}
{{- printf "%s-reports" (include "kubetune.fullname" .) -}}
{{- end -}}

{{/*
The base URL of the report endpoint, https://<service>.<namespace>.svc:<port>. The operator hands it to each
trainer, and its host is the name the endpoint's TLS certificate must carry.
*/}}
{{- define "kubetune.reportsURL" -}}
{{- printf "https://%s.%s.svc:%d" (include "kubetune.reportsServiceName" .) .Release.Namespace (int .Values.reports.port) -}}
{{- end -}}

{{/*
Trainer pods, as a LabelSelector's fields: the operator labels every trainer pod with
kubetune.io/finetunejob=<job name> and app.kubernetes.io/name=kubetune-trainer
(kubetune_operator.builders.names.child_labels). Call with (dict "extraLabels" ...) or (dict).
*/}}
{{- define "kubetune.trainerPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: kubetune-trainer
  {{- with .extraLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
matchExpressions:
  - key: kubetune.io/finetunejob
    operator: Exists
{{- end -}}

{{/* A duration of the schema's form (30s, 15m, 2h) in seconds: PromQL 2.x compares plain numbers. */}}
{{- define "kubetune.durationSeconds" -}}
{{- $count := regexFind "^[0-9]+" . -}}
{{- $unit := trimPrefix $count . -}}
{{- mul (int $count) (get (dict "s" 1 "m" 60 "h" 3600) $unit) -}}
{{- end -}}

{{/*
The Secret holding the operator's own CA for the report endpoint (made by the operator when missing).
*/}}
{{- define "kubetune.reportsCASecret" -}}
{{ include "kubetune.fullname" . }}-reports-ca
{{- end }}
