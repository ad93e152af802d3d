{{/* Names and labels. Components are named <fullname>-<component>, cut to 52 characters so
that a StatefulSet's revision label (name + hash) stays within 63. */}}
{{- define "grm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "grm.fullname" -}}
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

{{/* (dict "root" $ "component" "router") */}}
{{- define "grm.component" -}}
{{- printf "%s-%s" (include "grm.fullname" .root) .component | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "grm.headless" -}}
{{- printf "%s-headless" (include "grm.component" .) }}
{{- end }}

{{- define "grm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "grm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grm-cluster
{{- end }}

{{/* (dict "root" $ "component" "router") */}}
{{- define "grm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "grm.componentLabels" -}}
{{ include "grm.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "grm.podLabels" -}}
{{ include "grm.componentLabels" . }}
{{- with .root.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "grm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "grm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "image" .Values.image.server) */}}
{{- define "grm.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The DNS name a pod of a StatefulSet is reached at: (dict "root" $ "component" "grm-worker"). */}}
{{- define "grm.podDomain" -}}
{{- printf "%s.%s.svc.%s" (include "grm.headless" .) .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/* etcd client URLs, comma-separated: the external ones, or each bundled member's. */}}
{{- define "grm.etcdEndpoints" -}}
{{- if .Values.etcd.external.endpoints }}
{{- join "," .Values.etcd.external.endpoints }}
{{- else }}
{{- $ctx := dict "root" . "component" "etcd" }}
{{- $name := include "grm.component" $ctx }}
{{- $domain := include "grm.podDomain" $ctx }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:2379" $name $i $domain) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{/* Refusals of values that cannot work, with the value to set. */}}
{{- define "grm.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and (or .Values.tls.mutual .Values.tls.routerClientAuth) (not .Values.tls.enabled) }}
{{- fail "tls.mutual and tls.routerClientAuth need tls.enabled" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.existingSecret: a Secret holding the bearer token under auth.key" }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.enabled needs otel.endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)" }}
{{- end }}
{{- range $role := list "grm" "meta" }}
{{- $m := (index $.Values.workers $role).model }}
{{- if and (eq $m.source "pvc") (not $m.pvc.claimName) }}
{{- fail (printf "workers.%s.model.source pvc needs workers.%s.model.pvc.claimName" $role $role) }}
{{- end }}
{{- if and (eq $m.source "download") (not $m.download.repo) }}
{{- fail (printf "workers.%s.model.source download needs workers.%s.model.download.repo" $role $role) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The TLS flags of a node: (dict "root" $ "component" "router"). */}}
{{- define "grm.tlsArgs" -}}
{{- $tls := .root.Values.tls }}
{{- if $tls.enabled }}
- --tls-cert=/etc/grm/tls/tls.crt
- --tls-key=/etc/grm/tls/tls.key
- --tls-ca=/etc/grm/tls/ca.crt
{{- if or (and (eq .component "router") $tls.routerClientAuth) (and (ne .component "router") $tls.mutual) }}
- --tls-client-auth
{{- end }}
{{- end }}
{{- end }}

{{/* The environment of a grm container: (dict "root" $ "component" "router" "extra" list). */}}
{{- define "grm.env" -}}
{{- $v := .root.Values }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: HOME
  value: /tmp
{{- with $v.log.level }}
- name: GRM_LOG
  value: {{ . | quote }}
{{- end }}
- name: GRM_LOG_FORMAT
  value: {{ $v.log.format | quote }}
{{- if $v.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "grm-%s" .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (include "grm.fullname" .root) (ternary (printf ",%s" $v.otel.resourceAttributes) "" (ne $v.otel.resourceAttributes "")) | quote }}
{{- with $v.otel.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Mounts and volumes every grm container has: /tmp, and the TLS secret when on. */}}
{{- define "grm.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/grm/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "grm.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "grm.probeTiming" -}}
periodSeconds: {{ .Values.probes.periodSeconds }}
timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end }}

{{/* The pod-level settings every grm pod shares. */}}
{{- define "grm.podSpecCommon" -}}
serviceAccountName: {{ include "grm.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* nodeSelector, tolerations and affinity of one component's values. */}}
{{- define "grm.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "grm.podAnnotations" -}}
{{- with .Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
