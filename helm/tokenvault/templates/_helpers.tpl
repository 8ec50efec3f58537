{{/* ---------------------------------------------------------------------
  Names and labels
--------------------------------------------------------------------- */}}

{{- define "tokenvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "tokenvault.fullname" -}}
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

{{- define "tokenvault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. Call with the root context. */}}
{{- define "tokenvault.labels" -}}
helm.sh/chart: {{ include "tokenvault.chart" . }}
{{ include "tokenvault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenvault
{{- end }}

{{/* Labels that select this release's pods (all components). */}}
{{- define "tokenvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels that select the server pods only (not the migration Job). */}}
{{- define "tokenvault.serverSelectorLabels" -}}
{{ include "tokenvault.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "tokenvault.migrateSelectorLabels" -}}
{{ include "tokenvault.selectorLabels" . }}
app.kubernetes.io/component: migrate
{{- end }}

{{- define "tokenvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenvault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The migration hook runs before the chart's ServiceAccount exists on a first install, so it gets its own hook ServiceAccount. */}}
{{- define "tokenvault.migrateServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-migrate" (include "tokenvault.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "tokenvault.serviceAccountName" . }}
{{- end }}
{{- end }}

{{- define "tokenvault.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------
  Derived settings
--------------------------------------------------------------------- */}}

{{- define "tokenvault.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tokenvault.fullname" .) }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/*
Probe handler. With TLS off: the gRPC health service (service "" = overall).
The kubelet's gRPC probe cannot speak TLS, so with TLS on ("auto"): HTTP
`path` on the HTTP listener. Called with (dict "root" $ "path" "/healthz").
*/}}
{{- define "tokenvault.probeHandler" -}}
{{- $v := .root.Values -}}
{{- $type := $v.probes.type }}
{{- if eq $type "auto" }}
{{- $type = ternary "http" "grpc" $v.tls.enabled }}
{{- end }}
{{- if eq $type "grpc" -}}
grpc:
  port: {{ $v.server.grpcPort }}
  service: ""
{{- else -}}
httpGet:
  path: {{ .path }}
  port: http
  scheme: {{ include "tokenvault.httpScheme" .root }}
{{- end }}
{{- end }}

{{/* The issuer's CA file (`ca_file`): auth.workloadIdentity.caFile, else the mounted kube-root-ca.crt, else none. */}}
{{- define "tokenvault.issuerCaFile" -}}
{{- $wi := .Values.auth.workloadIdentity }}
{{- if $wi.caFile }}
{{- $wi.caFile }}
{{- else if $wi.kubeRootCa.enabled -}}
/etc/tokenvault/issuer-ca/ca.crt
{{- end }}
{{- end }}

{{/* "true" when the issuer is the cluster's own API server reached through the kubernetes Service. */}}
{{- define "tokenvault.issuerInCluster" -}}
{{- if regexMatch "^https://kubernetes(\\.default(\\.svc(\\.[^/:]+)?)?)?(:[0-9]+)?/?$" .Values.auth.workloadIdentity.issuer }}true{{- end }}
{{- end }}

{{- define "tokenvault.publicUrl" -}}
{{- if .Values.server.publicUrl }}
{{- .Values.server.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.host }}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d" (include "tokenvault.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.httpPort) }}
{{- end }}
{{- end }}

{{/* The providers to render (enabled unset or true), as JSON: include ... | fromJson. */}}
{{- define "tokenvault.enabledProviders" -}}
{{- $enabled := dict }}
{{- range $name, $p := .Values.providers }}
{{- if ne (toString $p.enabled) "false" }}
{{- $_ := set $enabled $name $p }}
{{- end }}
{{- end }}
{{- toJson $enabled }}
{{- end }}

{{- define "tokenvault.catalogEnabled" -}}
{{- if or .Values.providerCatalog.toml .Values.providerCatalog.existingConfigMap }}true{{- end }}
{{- end }}

{{- define "tokenvault.terminationGracePeriodSeconds" -}}
{{- $drain := int .Values.server.shutdownGraceSeconds }}
{{- $sleep := ternary (int .Values.preStop.sleepSeconds) 0 .Values.preStop.sleepEnabled }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain $sleep 10 }}
{{- else }}
{{- $tgps := int .Values.terminationGracePeriodSeconds }}
{{- if le $tgps (add $drain $sleep) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed server.shutdownGraceSeconds + preStop.sleepSeconds (%d), or the pod is killed mid-drain" $tgps (add $drain $sleep)) }}
{{- end }}
{{- $tgps }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------
  Validation: clear messages for settings that cannot work.
--------------------------------------------------------------------- */}}

{{- define "tokenvault.validate" -}}
{{- $_ := required "database.existingSecret is required: name an existing Secret holding the PostgreSQL URL under the key database.urlKey (see README, \"Secrets\")" .Values.database.existingSecret }}
{{- include "tokenvault.validateKeys" . }}
{{- if .Values.tls.enabled }}
{{- if and .Values.tls.certManager.enabled .Values.tls.existingSecret }}
{{- fail "tls: set either tls.existingSecret or tls.certManager.enabled, not both" }}
{{- end }}
{{- if not (or .Values.tls.certManager.enabled .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs a certificate: set tls.existingSecret (a kubernetes.io/tls Secret) or tls.certManager.enabled with tls.certManager.issuerRef.name" }}
{{- end }}
{{- if .Values.tls.certManager.enabled }}
{{- $_ = required "tls.certManager.issuerRef.name is required when tls.certManager.enabled" .Values.tls.certManager.issuerRef.name }}
{{- end }}
{{- else if or .Values.tls.certManager.enabled .Values.tls.clientCa.enabled }}
{{- fail "tls.certManager.enabled and tls.clientCa.enabled need tls.enabled=true" }}
{{- end }}
{{- if and .Values.tls.enabled (eq .Values.probes.type "grpc") }}
{{- fail "probes.type=grpc cannot work with tls.enabled: the kubelet's gRPC probe does not speak TLS; use probes.type=auto or http" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.host is required when ingress.enabled" }}
{{- end }}
{{- if and .Values.providerCatalog.toml .Values.providerCatalog.existingConfigMap }}
{{- fail "providerCatalog: set either toml or existingConfigMap, not both" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not (or .Values.networkPolicy.ingress.grpc.agents .Values.networkPolicy.ingress.grpc.platform)) }}
{{- fail "networkPolicy.enabled: list at least one peer in networkPolicy.ingress.grpc.agents or .platform, or nothing can reach gRPC" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not (or .Values.networkPolicy.egress.database.cidrs .Values.networkPolicy.egress.database.to)) }}
{{- fail "networkPolicy.enabled: set networkPolicy.egress.database.cidrs or .to, or the pods cannot reach PostgreSQL" }}
{{- end }}
{{- include "tokenvault.validateWorkloadIdentity" . }}
{{- if and .Values.preStop.sleepEnabled (semverCompare "<1.30-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "preStop.sleepEnabled needs Kubernetes >= 1.30 (lifecycle.preStop.sleep); this cluster is %s: set preStop.sleepEnabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/* Workload identity: what tokenvault refuses at start, and what cannot work in the cluster. */}}
{{- define "tokenvault.validateWorkloadIdentity" -}}
{{- $wi := .Values.auth.workloadIdentity }}
{{- if not $wi.enabled }}
{{- if .Values.auth.workloads }}
{{- fail "auth.workloads needs auth.workloadIdentity.enabled=true with auth.workloadIdentity.issuer (tokenvault refuses [[auth.workloads]] without [auth.workload_identity])" }}
{{- end }}
{{- else }}
{{- $_ := required "auth.workloadIdentity.issuer is required when auth.workloadIdentity.enabled: the tokens' iss, e.g. `kubectl get --raw /.well-known/openid-configuration | jq -r .issuer` (often https://kubernetes.default.svc.cluster.local)" $wi.issuer }}
{{- if or (eq (trimSuffix "/" $wi.audience) (trimSuffix "/" $wi.issuer)) (hasPrefix "https://kubernetes.default.svc" $wi.audience) }}
{{- fail (printf "auth.workloadIdentity.audience %q is the API server's own audience (by default the issuer): every automounted service-account token carries it, so those tokens would be accepted by tokenvault, and the tokens agents send tokenvault would work at the API server; use a dedicated audience such as \"tokenvault\" in the agents' projected token" $wi.audience) }}
{{- end }}
{{- if and $wi.issuerToken.enabled (eq $wi.issuerToken.audience $wi.audience) }}
{{- fail (printf "auth.workloadIdentity.issuerToken.audience must not be %q (auth.workloadIdentity.audience): tokenvault's own token for the API server would then be a workload token that tokenvault accepts; leave it empty (the API server's audience)" $wi.audience) }}
{{- end }}
{{- if and $wi.clusterRoleBinding.create (not $wi.issuerToken.enabled) }}
{{- fail "auth.workloadIdentity.clusterRoleBinding.create needs auth.workloadIdentity.issuerToken.enabled: the binding grants discovery to the server's ServiceAccount, which only helps if tokenvault sends its token" }}
{{- end }}
{{- $subjects := dict }}
{{- range .Values.auth.workloads }}
{{- if hasKey $subjects .subject }}
{{- fail (printf "auth.workloads: subject %q is mapped twice" .subject) }}
{{- end }}
{{- $_ := set $subjects .subject true }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (include "tokenvault.issuerInCluster" .) (not .Values.networkPolicy.egress.apiServer.cidrs) }}
{{- fail (printf "networkPolicy.enabled with the in-cluster issuer %s: set networkPolicy.egress.apiServer.cidrs to the API server's addresses (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes), or tokenvault cannot fetch the issuer's keys and refuses every workload token (NetworkPolicy cannot name the API server)" $wi.issuer) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The keyring, KEK epochs and the key table. tokenvault refuses each of these
at start; the chart refuses them at render time, with what to set.
*/}}
{{- define "tokenvault.validateKeys" -}}
{{- $k := .Values.keys }}
{{- $rotate := int $k.rotateEveryDays }}
{{- if eq $k.backend "file" }}
{{- $_ := required "keys.existingSecret is required with keys.backend=file: name an existing Secret holding the key-encryption-key file under the key keys.key (see README, \"Secrets\"), or choose keys.backend=aws-kms or pkcs11" $k.existingSecret }}
{{- if gt $rotate 0 }}
{{- fail (printf "keys.backend=file with keys.rotateEveryDays=%d cannot work: the key file comes from the read-only Secret keys.existingSecret, so tokenvault cannot rotate it (KEK epochs add and remove keys in that file) and would refuse to start. Choose keys.backend=aws-kms (keys.kms.keyId, keys.kms.region) or keys.backend=pkcs11 (keys.pkcs11.*), whose keys tokenvault can create and destroy; or set keys.rotateEveryDays: 0, accepting that every backup keeps a deleted user's tokens readable for as long as the key-encryption key lives" $rotate) }}
{{- end }}
{{- else if eq $k.backend "aws-kms" }}
{{- $_ := required "keys.kms.keyId is required with keys.backend=aws-kms: the active KMS key (key id, key ARN, alias/name or alias ARN)" $k.kms.keyId }}
{{- $_ = required "keys.kms.region is required with keys.backend=aws-kms: the AWS region of the keys, e.g. eu-west-1" $k.kms.region }}
{{- else if eq $k.backend "pkcs11" }}
{{- $_ := required "keys.pkcs11.module is required with keys.backend=pkcs11: the path of the vendor's PKCS#11 library inside the container (add it to the image or mount it with extraVolumes)" $k.pkcs11.module }}
{{- $_ = required "keys.pkcs11.tokenLabel is required with keys.backend=pkcs11: the label of the HSM token holding the keys" $k.pkcs11.tokenLabel }}
{{- $_ = required "keys.pkcs11.keyLabel is required with keys.backend=pkcs11: the label of the active AES key object on the token" $k.pkcs11.keyLabel }}
{{- $_ = required "keys.pkcs11.pinSecret.existingSecret is required with keys.backend=pkcs11: an existing Secret holding the token's user PIN under the key keys.pkcs11.pinSecret.key (mounted as keys.pkcs11.pin_file)" $k.pkcs11.pinSecret.existingSecret }}
{{- end }}
{{- if gt $rotate 0 }}
{{- if lt (int $k.destroyRetiredAfterDays) 1 }}
{{- fail "keys.destroyRetiredAfterDays must be at least 1 with KEK epochs (keys.rotateEveryDays > 0): a retired key is destroyed only after every data key was re-wrapped away from it" }}
{{- end }}
{{- $delay := ternary (int $k.kms.deletionPendingDays) 0 (eq $k.backend "aws-kms") }}
{{- $window := add $rotate (int $k.destroyRetiredAfterDays) $delay }}
{{- if gt $window (int $k.shredWithinDays) }}
{{- fail (printf "KEK epochs would keep backups readable for up to %d days after a token's data key is destroyed: keys.rotateEveryDays (%d) + keys.destroyRetiredAfterDays (%d)%s must be at most keys.shredWithinDays (%d); shorten the epochs or the retention of retired keys, or raise keys.shredWithinDays if that is the promise you make" $window $rotate (int $k.destroyRetiredAfterDays) (ternary (printf " + keys.kms.deletionPendingDays (%d)" $delay) "" (eq $k.backend "aws-kms")) (int $k.shredWithinDays)) }}
{{- end }}
{{- end }}
{{- if and (not .Values.database.keyDatabase.enabled) (not $k.allowSharedDatabase) }}
{{- fail "the key table would be in the main database (database.keyDatabase.enabled is false): every backup of that database then holds both the wrapped data keys and the ciphertexts they open, so a deleted user's tokens stay readable from any backup while the key-encryption key lives, and tokenvault refuses to start that way. Set database.keyDatabase.enabled: true with a separate database whose backups expire within the deletion window (database.keyDatabase.existingSecret/urlKey), or accept the risk with keys.allowSharedDatabase: true" }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------
  config.toml
  Called with (dict "root" $ "tls" bool "serve" bool). The migration hook
  renders it with tls=false: it does not listen, and a cert-manager Secret
  does not exist yet before the first install; and without serve: it
  authenticates no caller and serves no events, so it gets no
  [auth.workload_identity] and no [events].
--------------------------------------------------------------------- */}}

{{/* One TOML value: strings and lists go through toJson (JSON strings are valid TOML basic strings). */}}
{{- define "tokenvault.tomlValue" -}}
{{- if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}{{ toJson . }}
{{- end }}
{{- end }}

{{- define "tokenvault.configToml" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
# Rendered by the tokenvault Helm chart from values; it holds no secret.
# database_url / key_database_url come from the environment
# (TOKENVAULT_DATABASE_URL, TOKENVAULT_KEY_DATABASE_URL); other secrets are
# files mounted from existing Secrets.

[server]
grpc_listen = {{ printf "%s:%d" $v.server.listenAddress (int $v.server.grpcPort) | toJson }}
http_listen = {{ printf "%s:%d" $v.server.listenAddress (int $v.server.httpPort) | toJson }}
public_url = {{ include "tokenvault.publicUrl" $root | toJson }}
shutdown_grace_seconds = {{ int64 $v.server.shutdownGraceSeconds }}
{{- if and .tls $v.tls.enabled }}

[tls]
cert_file = "/etc/tokenvault/tls/tls.crt"
key_file = "/etc/tokenvault/tls/tls.key"
{{- if $v.tls.clientCa.enabled }}
client_ca_file = "/etc/tokenvault/tls/ca.crt"
{{- end }}
{{- end }}

[log]
format = {{ $v.log.format | toJson }}
level = {{ $v.log.level | toJson }}

[database]
max_connections = {{ int64 $v.database.maxConnections }}
# Migrations run in the chart's pre-install/pre-upgrade hook Job.
run_migrations = false

[keys]
{{- $k := $v.keys }}
backend = {{ $k.backend | toJson }}
{{- if eq $k.backend "file" }}
file = "/etc/tokenvault/keys/keys.toml"
{{- end }}
rotate_every_days = {{ int64 $k.rotateEveryDays }}
destroy_retired_after_days = {{ int64 $k.destroyRetiredAfterDays }}
shred_within_days = {{ int64 $k.shredWithinDays }}
{{- if and $k.allowSharedDatabase (not $v.database.keyDatabase.enabled) }}
allow_shared_database = true
{{- end }}
{{- if eq $k.backend "aws-kms" }}

[keys.kms]
key_id = {{ $k.kms.keyId | toJson }}
region = {{ $k.kms.region | toJson }}
{{- with $k.kms.olderKeyIds }}
older_key_ids = {{ toJson . }}
{{- end }}
{{- with $k.kms.endpointUrl }}
endpoint_url = {{ toJson . }}
{{- end }}
deletion_pending_days = {{ int64 $k.kms.deletionPendingDays }}
{{- else if eq $k.backend "pkcs11" }}

[keys.pkcs11]
module = {{ $k.pkcs11.module | toJson }}
token_label = {{ $k.pkcs11.tokenLabel | toJson }}
pin_file = "/etc/tokenvault/pkcs11/pin"
key_label = {{ $k.pkcs11.keyLabel | toJson }}
{{- with $k.pkcs11.olderKeyLabels }}
older_key_labels = {{ toJson . }}
{{- end }}
{{- end }}
{{- if $v.auth.apiKeys.existingSecret }}

[auth]
api_keys_file = "/etc/tokenvault/auth/api-keys.toml"
{{- end }}
{{- /* Workload identity is for serve only: the migration hook gets neither the section nor its files. */}}
{{- if and .serve $v.auth.workloadIdentity.enabled }}
{{- $wi := $v.auth.workloadIdentity }}

[auth.workload_identity]
issuer = {{ $wi.issuer | toJson }}
audience = {{ $wi.audience | toJson }}
{{- with include "tokenvault.issuerCaFile" $root }}
ca_file = {{ toJson . }}
{{- end }}
{{- if $wi.issuerToken.enabled }}
issuer_token_file = "/var/run/secrets/tokenvault-issuer/token"
{{- end }}
leeway_seconds = {{ int64 $wi.leewaySeconds }}
max_token_bytes = {{ int64 $wi.maxTokenBytes }}
refresh_interval_seconds = {{ int64 $wi.refreshIntervalSeconds }}
keys_max_age_seconds = {{ int64 $wi.keysMaxAgeSeconds }}
timeout_seconds = {{ int64 $wi.timeoutSeconds }}
{{- range $v.auth.workloads }}

[[auth.workloads]]
{{- with .name }}
name = {{ toJson . }}
{{- end }}
subject = {{ .subject | toJson }}
roles = {{ .roles | toJson }}
tenants = {{ .tenants | toJson }}
{{- end }}
{{- end }}

[consent]
allowed_return_origins = {{ $v.consent.allowedReturnOrigins | default list | toJson }}
require_confirmation = {{ $v.consent.requireConfirmation }}
tenants_without_confirmation = {{ $v.consent.tenantsWithoutConfirmation | default list | toJson }}
confirmation_ttl_seconds = {{ int $v.consent.confirmationTtlSeconds }}
other_account = {{ $v.consent.otherAccount | quote }}

[providers]
{{- if include "tokenvault.catalogEnabled" $root }}
catalog_file = "/etc/tokenvault/catalog/providers.toml"
{{- end }}
{{- range $name, $p := include "tokenvault.enabledProviders" $root | fromJson }}

[providers.{{ $name }}]
client_id = {{ $p.clientId | toJson }}
client_secret_file = {{ printf "/etc/tokenvault/providers/%s/client_secret" $name | toJson }}
{{- range $key, $value := $p.extraConfig }}
{{ $key }} = {{ include "tokenvault.tomlValue" $value }}
{{- end }}
{{- end }}

[broker]
max_lease_seconds = {{ int64 $v.broker.maxLeaseSeconds }}
cache_capacity = {{ int64 $v.broker.cacheCapacity }}

[lifecycle]
purge_after_days = {{ int64 $v.lifecycle.purgeAfterDays }}
audit_retention_days = {{ int64 $v.lifecycle.auditRetentionDays }}
sweep_interval_seconds = {{ int64 $v.lifecycle.sweepIntervalSeconds }}
{{- /* The event log and webhook delivery run inside serve only: the migration hook gets neither section. allow_http_loopback (development only) is never rendered: it stays false. */}}
{{- if .serve }}
{{- $ev := $v.events }}

[events]
retention_days = {{ int64 $ev.retentionDays }}
heartbeat_seconds = {{ int64 $ev.heartbeatSeconds }}

[events.webhooks]
workers = {{ int64 $ev.webhooks.workers }}
request_timeout_seconds = {{ int64 $ev.webhooks.requestTimeoutSeconds }}
retry_initial_ms = {{ int64 $ev.webhooks.retryInitialMs }}
retry_max_seconds = {{ int64 $ev.webhooks.retryMaxSeconds }}
give_up_after_seconds = {{ int64 $ev.webhooks.giveUpAfterSeconds }}
previous_secret_hours = {{ int64 $ev.webhooks.previousSecretHours }}
allowed_networks = {{ $ev.webhooks.allowedNetworks | default list | toJson }}
max_endpoints_per_tenant = {{ int64 $ev.webhooks.maxEndpointsPerTenant }}
{{- end }}
{{- end }}

{{/* ConfigMap "data:" block (config.toml and the optional catalog), at column 0. Same arguments as configToml. */}}
{{- define "tokenvault.configData" -}}
{{- $data := include "tokenvault.configToml" . | nindent 4 | printf "data:\n  config.toml: |%s" }}
{{- with .root.Values.providerCatalog.toml }}
{{- $data = printf "%s\n  providers.toml: |%s" $data (nindent 4 .) }}
{{- end }}
{{- /* nindent indents empty lines too; keep them empty. */}}
{{- regexReplaceAll "(?m)^ +$" $data "" }}
{{- end }}

{{/* ---------------------------------------------------------------------
  Pod pieces shared by the Deployment and the migration Job.
  Called with (dict "root" $ "configMap" NAME "tls" bool "serve" bool);
  "serve" (the Deployment) adds what only serve needs: workload identity.
--------------------------------------------------------------------- */}}

{{- define "tokenvault.env" -}}
{{- $v := .root.Values -}}
- name: TOKENVAULT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.existingSecret }}
      key: {{ $v.database.urlKey }}
{{- if $v.database.keyDatabase.enabled }}
- name: TOKENVAULT_KEY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $v.database.existingSecret $v.database.keyDatabase.existingSecret }}
      key: {{ $v.database.keyDatabase.urlKey }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokenvault.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: config
  mountPath: /etc/tokenvault/config.toml
  subPath: config.toml
  readOnly: true
{{- if include "tokenvault.catalogEnabled" .root }}
- name: catalog
  mountPath: /etc/tokenvault/catalog
  readOnly: true
{{- end }}
{{- if eq $v.keys.backend "file" }}
- name: keys
  mountPath: /etc/tokenvault/keys
  readOnly: true
{{- else if eq $v.keys.backend "pkcs11" }}
- name: pkcs11-pin
  mountPath: /etc/tokenvault/pkcs11
  readOnly: true
{{- end }}
{{- if $v.auth.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/tokenvault/auth
  readOnly: true
{{- end }}
{{- range $name, $p := include "tokenvault.enabledProviders" .root | fromJson }}
- name: provider-{{ $name }}
  mountPath: /etc/tokenvault/providers/{{ $name }}
  readOnly: true
{{- end }}
{{- if and .tls $v.tls.enabled }}
- name: tls
  mountPath: /etc/tokenvault/tls
  readOnly: true
{{- end }}
{{- if and .serve $v.auth.workloadIdentity.enabled }}
{{- if and $v.auth.workloadIdentity.kubeRootCa.enabled (not $v.auth.workloadIdentity.caFile) }}
- name: issuer-ca
  mountPath: /etc/tokenvault/issuer-ca
  readOnly: true
{{- end }}
{{- if $v.auth.workloadIdentity.issuerToken.enabled }}
- name: issuer-token
  mountPath: /var/run/secrets/tokenvault-issuer
  readOnly: true
{{- end }}
{{- end }}
- name: tmp
  mountPath: /tmp
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokenvault.volumes" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- name: config
  configMap:
    name: {{ .configMap }}
    items:
      - key: config.toml
        path: config.toml
{{- if include "tokenvault.catalogEnabled" $root }}
- name: catalog
  configMap:
    name: {{ default .configMap $v.providerCatalog.existingConfigMap }}
    items:
      - key: {{ ternary $v.providerCatalog.key "providers.toml" (not (empty $v.providerCatalog.existingConfigMap)) }}
        path: providers.toml
{{- end }}
{{- if eq $v.keys.backend "file" }}
- name: keys
  secret:
    secretName: {{ $v.keys.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.keys.key }}
        path: keys.toml
{{- else if eq $v.keys.backend "pkcs11" }}
- name: pkcs11-pin
  secret:
    secretName: {{ $v.keys.pkcs11.pinSecret.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.keys.pkcs11.pinSecret.key }}
        path: pin
{{- end }}
{{- if $v.auth.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ $v.auth.apiKeys.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.auth.apiKeys.key }}
        path: api-keys.toml
{{- end }}
{{- range $name, $p := include "tokenvault.enabledProviders" $root | fromJson }}
- name: provider-{{ $name }}
  secret:
    secretName: {{ $p.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ default "client-secret" $p.clientSecretKey }}
        path: client_secret
{{- end }}
{{- if and .tls $v.tls.enabled }}
- name: tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "tokenvault.tlsSecretName" $root }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- if $v.tls.clientCa.enabled }}
      - secret:
          name: {{ default (include "tokenvault.tlsSecretName" $root) $v.tls.clientCa.existingSecret }}
          items:
            - key: {{ $v.tls.clientCa.key }}
              path: ca.crt
      {{- end }}
{{- end }}
{{- if and .serve $v.auth.workloadIdentity.enabled }}
{{- $wi := $v.auth.workloadIdentity }}
{{- if and $wi.kubeRootCa.enabled (not $wi.caFile) }}
# The cluster CA (every namespace has this ConfigMap): the issuer's TLS.
- name: issuer-ca
  configMap:
    name: kube-root-ca.crt
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if $wi.issuerToken.enabled }}
# tokenvault's own token for the API server's issuer discovery and JWKS (re-read at each fetch).
- name: issuer-token
  projected:
    defaultMode: 0440
    sources:
      - serviceAccountToken:
          path: token
          {{- with $wi.issuerToken.audience }}
          audience: {{ . }}
          {{- end }}
          expirationSeconds: {{ int64 $wi.issuerToken.expirationSeconds }}
{{- end }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probe timing fields from one of .Values.probes.{startup,liveness,readiness}. */}}
{{- define "tokenvault.probeTiming" -}}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* NetworkPolicy egress rules shared by the server and the migration Job: DNS and PostgreSQL. */}}
{{- define "tokenvault.egressDnsAndDatabase" -}}
{{- $np := .Values.networkPolicy.egress -}}
{{- if $np.dns.enabled }}
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
- to:
    {{- range $np.database.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- with $np.database.to }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - port: {{ $np.database.port }}
      protocol: TCP
{{- end }}

{{/* Scheme of the HTTP listener: HTTPS when the binary's [tls] is on (it secures both listeners). */}}
{{- define "tokenvault.httpScheme" -}}
{{- .Values.server.httpScheme | default (ternary "HTTPS" "HTTP" .Values.tls.enabled) -}}
{{- end }}
