{{- /*
  Names, labels and URLs shared by binderbox's templates.  zero-to-jupyterhub's own
  named templates (jupyterhub.hub.fullname...) work from this chart too: they read
  .Values.jupyterhub when called from a parent chart.
*/}}

{{- define "binderbox.labels" -}}
app.kubernetes.io/name: binderbox
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end }}

{{- /* labels selecting binderbox's own pod */}}
{{- define "binderbox.selectorLabels" -}}
app.kubernetes.io/name: binderbox
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: web
{{- end }}

{{- /* labels of build pods (their NetworkPolicy selects them) */}}
{{- define "binderbox.buildSelectorLabels" -}}
app.kubernetes.io/name: binderbox
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: build
{{- end }}

{{- define "binderbox.image" -}}
{{ .Values.image.name }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "binderbox.hubApiUrl" -}}
{{- .Values.hubService.apiUrl | default (printf "http://%s:8081/hub/api/" (include "jupyterhub.hub.fullname" .)) }}
{{- end }}

{{- define "binderbox.proxyApiUrl" -}}
{{- .Values.hubService.proxyApiUrl | default (printf "http://%s:8001" (include "jupyterhub.proxy-api.fullname" .)) }}
{{- end }}

{{- /* what the proxy's / route points at: binderbox's Service */}}
{{- define "binderbox.routeTarget" -}}
http://binderbox.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}
{{- end }}

{{- define "binderbox.storeClaim" -}}
{{- .Values.store.existingClaim | default .Values.store.claimName }}
{{- end }}

{{- define "binderbox.datasetsClaim" -}}
{{- .Values.datasets.existingClaim | default .Values.datasets.claimName }}
{{- end }}

{{- /* the registry's dockerconfigjson Secret (image mode), or nothing */}}
{{- define "binderbox.registrySecret" -}}
{{- if eq .Values.mode "image" }}
{{- .Values.registry.existingSecret | default (and .Values.registry.username .Values.registry.secretName) }}
{{- end }}
{{- end }}

{{- define "binderbox.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{- /* the checks values.schema.json cannot make: fail the render with a plain message */}}
{{- define "binderbox.checks" -}}
{{- if and (ne .Values.logins.mode "none") (ne .Values.logins.oauthCallbackUrl (dig "hub" "services" "binderbox" "oauth_redirect_uri" "" (.Values.jupyterhub | toYaml | fromYaml))) }}
{{- fail "logins.oauthCallbackUrl must equal jupyterhub.hub.services.binderbox.oauth_redirect_uri (the hub only sends logins back there)" }}
{{- end }}
{{- if and (eq .Values.mode "store") (not (has "ReadWriteMany" .Values.store.accessModes)) (not .Values.store.existingClaim) }}
{{- fail "mode: store needs store.accessModes to include ReadWriteMany (builds and sessions on any node mount the store)" }}
{{- end }}
{{- if eq .Values.mode "image" }}
{{- $sessions := dig "hub" "config" "KubernetesSessions" dict (.Values.jupyterhub | toYaml | fromYaml) }}
{{- $repository := printf "%s/%s" (.Values.registry.url | trimPrefix "https://" | trimPrefix "http://" | trimSuffix "/") .Values.registry.prefix }}
{{- if or (ne (get $sessions "mode" | default "store") "image") (ne (get $sessions "image_prefix" | default "") $repository) }}
{{- fail (printf "mode: image needs the hub's sessions to run images from the registry: set jupyterhub.hub.config.KubernetesSessions.mode to image and its image_prefix to %s" $repository) }}
{{- end }}
{{- end }}
{{- if not (hasKey .Values.jupyterhub.hub.services "binderbox") }}
{{- fail "jupyterhub.hub.services.binderbox is binderbox's service in the hub: keep it" }}
{{- end }}
{{- end }}
