{{/* Chart name, truncated to a DNS label. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every object: <release>-kubetune, or the release if it contains the name. */}}
{{- define "kubetune.fullname" -}}
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

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* Selector of the operator pods (immutable in a Deployment: never add to it). */}}
{{- define "kubetune.operatorSelector" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.peeringName" -}}
{{- default (include "kubetune.fullname" .) .Values.peering.name }}
{{- end }}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to appVersion).
     Call with (dict "image" <image values> "root" $). */}}
{{- define "kubetune.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Server image: its own repository if set, else the trainer image (which serves too). */}}
{{- define "kubetune.serverImage" -}}
{{- if .Values.server.image.repository }}
{{- include "kubetune.image" (dict "image" .Values.server.image "root" .) }}
{{- else }}
{{- include "kubetune.image" (dict "image" .Values.trainer.image "root" .) }}
{{- end }}
{{- end }}

{{/* Namespaces that get a trainer ServiceAccount, de-duplicated. */}}
{{- define "kubetune.trainerNamespaces" -}}
{{- $all := concat (list .Release.Namespace) .Values.watchNamespaces .Values.trainer.serviceAccount.extraNamespaces }}
{{- toJson (uniq $all) }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express; each message names the value and the fix. */}}
{{- define "kubetune.validate" -}}
{{- if and (not .Values.peering.enabled) (gt (int .Values.operator.replicas) 1) }}
{{- fail "peering.enabled=false needs operator.replicas=1: without Kopf peering every replica would act on every resource" }}
{{- end }}
{{- if and (not .Values.server.image.repository) (or .Values.server.image.tag .Values.server.image.digest) }}
{{- fail "server.image.tag/digest need server.image.repository: with it empty the serving pods run the trainer image (pin that with trainer.image.digest)" }}
{{- end }}
{{- end }}
