{{/*
Labels every object carries: the kustomize kit's app.kubernetes.io/part-of plus
Helm's own. The kit's app.kubernetes.io/name and component labels are written
in each template, as in deploy/base.
*/}}
{{- define "tokenwatch.labels" -}}
app.kubernetes.io/part-of: tokenwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "tokenwatch.agentImage" -}}
{{ .Values.images.agent.repository }}:{{ .Values.images.agent.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tokenwatch.aggregatorImage" -}}
{{ .Values.images.aggregator.repository }}:{{ .Values.images.aggregator.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The cluster name, required wherever an agent or its certificate is rendered. */}}
{{- define "tokenwatch.cluster" -}}
{{ required "cluster.name is required: the name this cluster reports as (the agent's --cluster)" .Values.cluster.name }}
{{- end }}

{{/* The host:port the agents dial. */}}
{{- define "tokenwatch.aggregatorAddress" -}}
{{- if .Values.agent.aggregator -}}
{{ .Values.agent.aggregator }}
{{- else if .Values.aggregator.enabled -}}
tokenwatch-aggregator.{{ .Release.Namespace }}.svc:8443
{{- else -}}
{{ fail "agent.aggregator is required when aggregator.enabled is false: the host:port of the hub's aggregator" }}
{{- end }}
{{- end }}

{{/* The aggregator's --config file. */}}
{{- define "tokenwatch.aggregatorConfig" -}}
{{ .Values.aggregator.config | default (.Files.Get "files/aggregator.yaml") }}
{{- end }}

{{/* The issuer of every certificate. */}}
{{- define "tokenwatch.issuerRef" -}}
{{- with .Values.certManager.issuerRef }}
group: {{ .group | default "cert-manager.io" }}
kind: {{ required "certManager.issuerRef.kind is required with certManager.issuerRef" .kind }}
name: {{ required "certManager.issuerRef.name is required with certManager.issuerRef" .name }}
{{- else }}
group: cert-manager.io
kind: Issuer
name: tokenwatch-ca
{{- end }}
{{- end }}

{{/* A client certificate for the agents of one cluster: (list $ name secretName certName). */}}
{{- define "tokenwatch.agentCertificate" -}}
{{- $root := index . 0 -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ index . 3 }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tokenwatch.labels" $root | nindent 4 }}
spec:
  secretName: {{ index . 2 }}
  duration: 2160h # 90 days
  renewBefore: 360h # 15 days
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  usages:
    - digital signature
    - client auth
  uris:
    - spiffe://tokenwatch/cluster/{{ index . 1 }}
  issuerRef:
    {{- include "tokenwatch.issuerRef" $root | nindent 4 }}
{{- end }}

{{/* The OTLP endpoint's port, which the aggregator's egress policy opens (4317 when unset). */}}
{{- define "tokenwatch.otlpPort" -}}
{{- with .Values.aggregator.otlp.endpoint -}}
{{ splitList ":" . | last | int }}
{{- else -}}
4317
{{- end }}
{{- end }}

{{/* expose.sourceRanges as a JSON list, required when exposed. */}}
{{- define "tokenwatch.sourceRanges" -}}
{{- if not .Values.expose.sourceRanges -}}
{{ fail "expose.sourceRanges is required with expose.enabled: the other clusters' egress ranges (CIDRs)" }}
{{- end -}}
{{ toJson .Values.expose.sourceRanges }}
{{- end }}
