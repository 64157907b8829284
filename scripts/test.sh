#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the tools the chart checks need (from
# package registries only), checks the chart, checks that kube and k8s-openapi are linked once,
# and runs every Rust test in the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-tools.sh
bash scripts/check-chart.sh

dups="$(cargo tree --workspace -d --edges normal 2>/dev/null | grep -E '^(kube|kube-client|kube-core|k8s-openapi) v' || true)"
if [[ -n "$dups" ]]; then
  echo "test: more than one copy of kube or k8s-openapi is linked:" >&2
  echo "$dups" >&2
  exit 1
fi

cargo test --workspace
