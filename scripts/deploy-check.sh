#!/usr/bin/env bash
# Checks the container image definition and the Kubernetes manifests (deploy/), offline:
# - hadolint on the Dockerfile;
# - the copies that must not drift: deploy/base/policy.toml = policy/default.toml, the
#   PrometheusRule = what deploy/observability/prometheusrule.py writes from alerts.yaml;
# - `kubectl kustomize` renders deploy/overlays/dev, prod and prod-mtls;
# - `kubernetes-validate --strict` on every rendered object, for every Kubernetes version it
#   bundles from the oldest the manifests support (1.30) to its default;
# - custom resources (CloudNativePG, prometheus-operator) against the CRD schemas vendored in
#   deploy/schemas/ (jsonschema);
# - checkov (framework kubernetes): no failed check that deploy/checkov-skips.yaml does not list
#   with its reason;
# - yamllint on deploy/;
# - tests/deploy (pytest): the properties of the rendered objects (restricted pods, probes,
#   budgets, autoscalers, NetworkPolicies evaluated path by path, secrets, replicas).
# Installs its Python tools into .venv-deploy on first use (pinned in tests/deploy/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-deploy
requirements=tests/deploy/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.requirements"; then
  echo "installing the deploy check's tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi
py="$venv/bin/python"
bin="$venv/bin"

if ! command -v kubectl >/dev/null; then
  echo "FAIL: kubectl (>= 1.30, with its built-in kustomize) is needed to render deploy/" >&2
  exit 1
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

echo "-- hadolint Dockerfile"
"$bin/hadolint" Dockerfile

echo "-- copies that must not drift"
diff -u policy/default.toml deploy/base/policy.toml \
  || { echo "FAIL: deploy/base/policy.toml differs from policy/default.toml; copy it" >&2; exit 1; }
python3 deploy/observability/prometheusrule.py \
  | diff -u deploy/components/prometheus-operator/prometheusrule.yaml - \
  || { echo "FAIL: the PrometheusRule is not what deploy/observability/prometheusrule.py writes; regenerate it" >&2; exit 1; }

echo "-- kubectl kustomize"
for overlay in dev prod prod-mtls; do
  kubectl kustomize "deploy/overlays/$overlay" >"$rendered/$overlay.yaml"
  echo "deploy/overlays/$overlay: $(grep -c '^kind:' "$rendered/$overlay.yaml") objects"
done

echo "-- kubernetes-validate --strict"
versions=$(ls "$("$py" -c 'import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))')/kubernetes-json-schema" \
  | sed -n 's/^v\([0-9]*\.[0-9]*\.[0-9]*\)-local-strict$/\1/p' | sort -V \
  | awk -F. '$1 > 1 || $2 >= 30')
[ -n "$versions" ] || { echo "FAIL: kubernetes-validate bundles no schema from 1.30 on" >&2; exit 1; }
for version in $versions; do
  out=$("$bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered/dev.yaml" "$rendered/prod.yaml" "$rendered/prod-mtls.yaml" 2>&1) \
    || { echo "$out" >&2; echo "FAIL: kubernetes-validate for Kubernetes $version" >&2; exit 1; }
  # Only the custom kinds validated below may lack a built-in schema (a misspelt kind may not).
  unknown=$(echo "$out" | grep "Couldn't find schema" \
    | grep -v -E "kind (Cluster with api version postgresql\.cnpg\.io/v1|(ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1|(Certificate|Issuer) with api version cert-manager\.io/v1) " || true)
  [ -z "$unknown" ] || { echo "$unknown" >&2; echo "FAIL: kinds without any schema" >&2; exit 1; }
done
echo "valid for Kubernetes $(echo $versions | tr ' ' ',')"

echo "-- custom resources against the vendored CRD schemas (jsonschema)"
"$py" scripts/deploy_crd_validate.py "$rendered/dev.yaml" "$rendered/prod.yaml" "$rendered/prod-mtls.yaml"

echo "-- checkov (kubernetes)"
"$py" scripts/deploy_checkov.py "$rendered"

echo "-- yamllint deploy/"
"$bin/yamllint" -c deploy/.yamllint.yaml -s deploy

echo "-- tests/deploy (properties of the rendered manifests)"
DEPLOY_RENDERED="$rendered" "$bin/pytest" -q -p no:cacheprovider tests/deploy
