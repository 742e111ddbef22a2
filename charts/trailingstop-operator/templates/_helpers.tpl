{{/*
Names, labels and the values the templates share.
*/}}

{{- define "trailingstop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trailingstop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- /* "trailingstop", "trailingstop-operator", "prod-trailingstop": the release name says it all */}}
{{- if or (contains $name .Release.Name) (contains "trailingstop" .Release.Name) }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trailingstop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "trailingstop.labels" -}}
helm.sh/chart: {{ include "trailingstop.chart" . }}
{{ include "trailingstop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trailingstop
{{- end }}

{{- define "trailingstop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trailingstop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator pod's selector (also the NetworkPolicy's). */}}
{{- define "trailingstop.operatorSelectorLabels" -}}
{{ include "trailingstop.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "trailingstop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trailingstop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag] or repository@digest of an image block; the tag defaults to appVersion. */}}
{{- define "trailingstop.imageRef" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "trailingstop.image" -}}
{{- include "trailingstop.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The workers' image: the operator's, unless any of workers.image is set. */}}
{{- define "trailingstop.workerImage" -}}
{{- $workers := .Values.workers.image }}
{{- if or $workers.repository $workers.tag $workers.digest }}
{{- $image := dict "repository" (default .Values.image.repository $workers.repository) "tag" $workers.tag "digest" $workers.digest }}
{{- include "trailingstop.imageRef" (list $image .Chart.AppVersion) }}
{{- else }}
{{- include "trailingstop.image" . }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches (when not all): watch.namespaces, else the release's. */}}
{{- define "trailingstop.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," (uniq .Values.watch.namespaces) }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The name of the operator's per-namespace broker Secret (OperatorConfig.amqp_secret_name). */}}
{{- define "trailingstop.workerAmqpSecret" -}}
ts-amqp
{{- end }}

{{/* --- RabbitMQ ------------------------------------------------------------------------------ */}}

{{- define "trailingstop.rabbitmq.fullname" -}}
{{- printf "%s-rabbitmq" (include "trailingstop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trailingstop.rabbitmq.selectorLabels" -}}
{{ include "trailingstop.selectorLabels" . }}
app.kubernetes.io/component: rabbitmq
{{- end }}

{{- define "trailingstop.rabbitmqCluster.name" -}}
{{- default (include "trailingstop.rabbitmq.fullname" .) .Values.rabbitmq.clusterOperator.name }}
{{- end }}

{{- define "trailingstop.rabbitmq.validate" -}}
{{- if and .Values.rabbitmq.deploy .Values.rabbitmq.clusterOperator.enabled }}
{{- fail "rabbitmq.deploy and rabbitmq.clusterOperator.enabled are exclusive: choose one broker" }}
{{- end }}
{{- if and (not .Values.rabbitmq.deploy) (not .Values.rabbitmq.clusterOperator.enabled) (not .Values.rabbitmq.existingSecret) }}
{{- fail "the operator needs a broker: set rabbitmq.existingSecret (a Secret with the AMQP URL), rabbitmq.deploy=true (quickstart) or rabbitmq.clusterOperator.enabled=true" }}
{{- end }}
{{- end }}

{{/* The operator container's broker environment: AMQP_URL, always from a Secret. */}}
{{- define "trailingstop.amqpEnv" -}}
{{- include "trailingstop.rabbitmq.validate" . }}
{{- if .Values.rabbitmq.deploy }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trailingstop.rabbitmq.fullname" . }}
      key: url
{{- else if .Values.rabbitmq.clusterOperator.enabled }}
{{- $secret := printf "%s-default-user" (include "trailingstop.rabbitmqCluster.name" .) }}
# The Cluster Operator's default-user Secret has the parts, not the URL: Kubernetes expands
# $(VAR) from the variables above. (AMQP_PASSWORD is masked in the operator's logs.)
- name: AMQP_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: username
- name: AMQP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: password
- name: AMQP_HOST
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: host
- name: AMQP_PORT
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: port
- name: AMQP_URL
  value: amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@$(AMQP_HOST):$(AMQP_PORT)/
{{- else }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.existingSecret }}
      key: {{ .Values.rabbitmq.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Tracing settings, as a map (for the operator's env and the workers' TRAILINGSTOP_WORKER_ENV). */}}
{{- define "trailingstop.tracingEnv" -}}
{{- $env := dict }}
{{- if .Values.tracing.enabled }}
{{- $_ := set $env "TRAILINGSTOP_TRACING" .Values.tracing.mode }}
{{- if .Values.tracing.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .Values.tracing.endpoint }}
{{- end }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" .Values.tracing.protocol }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{- define "trailingstop.workerEnv" -}}
{{- $env := dict }}
{{- if .Values.tracing.workers }}
{{- $env = include "trailingstop.tracingEnv" . | fromJson }}
{{- end }}
{{- range $name, $value := .Values.workers.env }}
{{- $_ := set $env $name (toString $value) }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/* The restricted container security context shared by the chart's containers. */}}
{{- define "trailingstop.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Broker tenancy: this release's name on the broker (the namespaces' vhosts and users are
ts.<instance>.<namespace>) and how tenants are made.
*/}}
{{- define "trailingstop.tenancyEnv" -}}
{{- $tenancy := .Values.rabbitmq.tenancy }}
- name: TRAILINGSTOP_INSTANCE
  value: {{ printf "%s.%s" .Release.Namespace .Release.Name | quote }}
{{- if eq $tenancy.admin "topologyOperator" }}
- name: TRAILINGSTOP_BROKER_ADMIN
  value: topology-operator
{{- if $tenancy.connectionSecret }}
- name: TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET
  value: {{ $tenancy.connectionSecret | quote }}
{{- else }}
- name: TRAILINGSTOP_RABBITMQ_CLUSTER
  value: {{ default (include "trailingstop.rabbitmqCluster.name" .) $tenancy.clusterName | quote }}
{{- end }}
{{- else }}
- name: TRAILINGSTOP_BROKER_ADMIN
  value: management-api
{{- with $tenancy.managementUrl }}
- name: TRAILINGSTOP_RABBITMQ_MANAGEMENT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
