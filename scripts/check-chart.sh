#!/usr/bin/env bash
# Lints and renders the Helm chart, and validates the rendered manifests against the
# Kubernetes OpenAPI schemas. Needs the tools from scripts/install-tools.sh.
#
#   helm lint --strict                   default values and ci/all-on-values.yaml
#   helm template                        default values and ci/all-on-values.yaml
#   kubernetes-validate --strict         every rendered document
#
# kubernetes-validate only ships schemas for built-in kinds. For a kind it has no schema
# for (here only monitoring.coreos.com/v1 ServiceMonitor) it prints a WARN and still exits 0;
# it has no flag to turn that into an error or to silence it. This script therefore checks
# that the only documents without a schema are ServiceMonitors, and checks those separately
# (apiVersion, kind, selector and endpoints). The CRDs under crds/ are not templated; they
# are validated as apiextensions.k8s.io/v1 CustomResourceDefinitions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/vllm-operator"
HELM="${HELM:-$ROOT/.tools/bin/helm}"
KV="${KUBERNETES_VALIDATE:-$ROOT/.venv/bin/kubernetes-validate}"
PY="$ROOT/.venv/bin/python"
KUBE_VERSION="${KUBE_VERSION:-1.33.0}"

for tool in "$HELM" "$KV"; do
  [[ -x "$tool" ]] || { echo "check-chart: $tool missing; run scripts/install-tools.sh" >&2; exit 1; }
done

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
fail=0

step() { printf '\n== %s\n' "$*"; }

validate() {
  local name="$1" file="$2"
  # Split into one file per document so that a failure names the document.
  "$PY" - "$file" "$OUT/$name" <<'PY'
import os, sys, yaml
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
n = 0
with open(src) as f:
    for doc in yaml.safe_load_all(f):
        if not doc:
            continue
        n += 1
        kind = doc.get("kind", "unknown")
        sub = "schemaless" if doc.get("apiVersion", "").startswith("monitoring.coreos.com/") else "k8s"
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
        with open(os.path.join(dst, sub, f"{n:03d}-{kind}.yaml"), "w") as out:
            yaml.safe_dump(doc, out)
            if sub == "schemaless":
                assert kind == "ServiceMonitor", f"unexpected schemaless kind {kind}"
                spec = doc["spec"]
                assert spec["selector"]["matchLabels"], "ServiceMonitor without a selector"
                assert spec["endpoints"] and all(e.get("port") for e in spec["endpoints"]), \
                    "ServiceMonitor endpoint without a port"
print(f"{n} documents")
PY
  local log="$OUT/$name.log"
  if ! "$KV" --strict --kubernetes-version "$KUBE_VERSION" "$OUT/$name"/k8s/*.yaml >"$log" 2>&1; then
    cat "$log"; echo "check-chart: kubernetes-validate failed for $name" >&2; return 1
  fi
  if grep -v '^INFO ' "$log" | grep -q .; then
    cat "$log"; echo "check-chart: kubernetes-validate warned for $name" >&2; return 1
  fi
  echo "kubernetes-validate --strict: $(grep -c '^INFO .* passed' "$log") documents passed"
  if compgen -G "$OUT/$name/schemaless/*.yaml" >/dev/null; then
    echo "checked separately (no schema in kubernetes-validate): $(ls "$OUT/$name/schemaless" | tr '\n' ' ')"
  fi
}

step "helm version"
"$HELM" version --short

step "helm lint --strict (default values)"
"$HELM" lint --strict "$CHART" || fail=1

step "helm lint --strict (ci/all-on-values.yaml)"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/all-on-values.yaml" || fail=1

step "helm template (default values) | kubernetes-validate --strict"
if "$HELM" template vllm-operator "$CHART" --namespace vllm-system >"$OUT/default.yaml"; then
  validate default "$OUT/default.yaml" || fail=1
else
  fail=1
fi

step "helm template (ci/all-on-values.yaml) | kubernetes-validate --strict"
if "$HELM" template vllm-operator "$CHART" --namespace vllm-system \
    -f "$CHART/ci/all-on-values.yaml" >"$OUT/all-on.yaml"; then
  validate all-on "$OUT/all-on.yaml" || fail=1
  grep -q '^kind: ServiceMonitor' "$OUT/all-on.yaml" || { echo "all-on: no ServiceMonitor rendered" >&2; fail=1; }
  grep -q '^kind: NetworkPolicy' "$OUT/all-on.yaml" || { echo "all-on: no NetworkPolicy rendered" >&2; fail=1; }
else
  fail=1
fi

step "CRDs (charts/vllm-operator/crds) | kubernetes-validate --strict"
cat "$CHART"/crds/*.yaml >"$OUT/crds.yaml"
validate crds "$OUT/crds.yaml" || fail=1

step "values.schema.json rejects unknown keys"
if "$HELM" template vllm-operator "$CHART" --set no.such.key=1 >/dev/null 2>&1; then
  echo "check-chart: the values schema accepted an unknown key" >&2; fail=1
else
  echo "unknown key rejected"
fi

if [[ $fail != 0 ]]; then
  echo; echo "check-chart: FAILED" >&2; exit 1
fi
echo; echo "check-chart: OK"
