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

{{/* etcd client URLs, comma-separated: the external ones, or each bundled member's (https
under TLS). */}}
{{- define "grm.etcdEndpoints" -}}
{{- if .Values.etcd.external.endpoints }}
{{- join "," .Values.etcd.external.endpoints }}
{{- else }}
{{- $ctx := dict "root" . "component" "etcd" }}
{{- $name := include "grm.component" $ctx }}
{{- $domain := include "grm.podDomain" $ctx }}
{{- $scheme := ternary "https" "http" .Values.tls.enabled }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s:2379" $scheme $name $i $domain) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{/* Whether nodes meet etcd in plaintext, where anyone who reaches it can write: "true" or "". */}}
{{- define "grm.etcdPlaintext" -}}
{{- if .Values.etcd.external.endpoints }}
{{- range .Values.etcd.external.endpoints }}{{ if hasPrefix "http://" . }}true{{ end }}{{ end }}
{{- else if not .Values.tls.enabled }}true
{{- end }}
{{- end }}

{{/* The TLS Secret mounted in every pod: the user's, or the generated one. */}}
{{- define "grm.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "grm.fullname" .)) }}
{{- end }}

{{/* The Secret holding the cluster token: the user's, or the generated one. */}}
{{- define "grm.clusterTokenSecretName" -}}
{{- .Values.clusterToken.existingSecret | default (printf "%s-cluster-token" (include "grm.fullname" .)) }}
{{- end }}

{{/* The DNS names the generated certificate covers, a YAML list: every name a node is dialled
or verified at. Workers and aggregators register <pod>.<headless service> (a wildcard, so that
scaling needs no new certificate); the bare headless name is what grpc_health_probe names
(tls.aggregatorProbe exec); etcd members also by name, since etcd checks a peer's certificate
by looking its names up; the router's Service as clients name it; localhost for port-forwards. */}}
{{- define "grm.tlsDnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.clusterDomain }}
{{- $names := list }}
{{- $services := list (include "grm.component" (dict "root" . "component" "router")) }}
{{- range $c := list "grm-worker" "meta-worker" "aggregator" }}
{{- $pod := include "grm.podDomain" (dict "root" $ "component" $c) }}
{{- $names = append $names $pod }}
{{- $names = append $names (printf "*.%s" $pod) }}
{{- end }}
{{- if not .Values.etcd.external.endpoints }}
{{- $ctx := dict "root" . "component" "etcd" }}
{{- $etcd := include "grm.component" $ctx }}
{{- $pod := include "grm.podDomain" $ctx }}
{{- $services = append $services $etcd }}
{{- $names = append $names $pod }}
{{- $names = append $names (printf "*.%s" $pod) }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $names = append $names (printf "%s-%d.%s" $etcd $i $pod) }}
{{- end }}
{{- end }}
{{- range $svc := $services }}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $domain)) }}
{{- end }}
{{- $names = concat $names (list "localhost") .Values.tls.generated.extraDnsNames }}
{{- toYaml (uniq $names) }}
{{- end }}

{{/* Refusals of values that cannot work, with the value to set. */}}
{{- define "grm.validate" -}}
{{- $v := .Values }}
{{- if and $v.tls.routerClientAuth (not $v.tls.enabled) }}
{{- fail "tls.routerClientAuth needs tls.enabled" }}
{{- end }}
{{- if and $v.auth.enabled (not $v.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.existingSecret: a Secret holding the bearer token under auth.key" }}
{{- end }}
{{- if and $v.clusterToken.existingSecret (not $v.clusterToken.enabled) }}
{{- fail "clusterToken.existingSecret is set but clusterToken.enabled is false: the token would not be used" }}
{{- end }}
{{- /* A guarded public API with unguarded internal services: the issue this refuses. The
router refuses to start so (--auth-token-file without --cluster-token-file or mutual TLS). */}}
{{- if and $v.auth.enabled (not $v.clusterToken.enabled) }}
{{- if not $v.tls.enabled }}
{{- fail "auth.enabled guards the public API, but with tls.enabled=false and clusterToken.enabled=false the workers and aggregators would answer anyone who reaches them, and anyone who can write to the plaintext etcd could register a member: set clusterToken.enabled=true (generated, or clusterToken.existingSecret) or tls.enabled=true with tls.mutual" }}
{{- else if not $v.tls.mutual }}
{{- fail "auth.enabled with clusterToken.enabled=false needs mutual TLS between nodes (tls.mutual=true), or the workers and aggregators answer callers without credentials: set clusterToken.enabled=true, or tls.mutual=true" }}
{{- end }}
{{- end }}
{{- if and $v.otel.enabled (not $v.otel.endpoint) }}
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

{{/* The credentials flags of a node, TLS and the cluster token: (dict "root" $ "component"
"router"). Mutual TLS (--tls-client-auth) between nodes; on the router it also applies to its
public clients, hence tls.routerClientAuth (off by default: the router presents its certificate
to the members whether or not it asks its own clients for one). */}}
{{- define "grm.securityArgs" -}}
{{- $tls := .root.Values.tls }}
{{- if $tls.enabled }}
- --tls-cert=/etc/grm/tls/tls.crt
- --tls-key=/etc/grm/tls/tls.key
- --tls-ca=/etc/grm/tls/ca.crt
{{- if or (and (eq .component "router") $tls.routerClientAuth) (and (ne .component "router") $tls.mutual) }}
- --tls-client-auth
{{- end }}
{{- end }}
{{- if .root.Values.clusterToken.enabled }}
- --cluster-token-file=/etc/grm/cluster-token/token
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
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
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

{{/* Mounts and volumes every grm container has: /tmp, the TLS Secret and the cluster token when on. */}}
{{- define "grm.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/grm/tls
  readOnly: true
{{- end }}
{{- if .Values.clusterToken.enabled }}
- name: cluster-token
  mountPath: /etc/grm/cluster-token
  readOnly: true
{{- end }}
{{- end }}

{{- define "grm.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "grm.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}

{{- define "grm.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
{{ include "grm.tlsVolume" . }}
{{- end }}
{{- if .Values.clusterToken.enabled }}
- name: cluster-token
  secret:
    secretName: {{ include "grm.clusterTokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.clusterToken.key }}
        path: token
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
