#!/usr/bin/env bash
# Runs every flotilla test: formatting, lints, unit and integration tests, and the end-to-end
# tests on real Kubernetes control planes (built from the Go module proxy on first use).
# This is the command the README names and .ci/run calls; it needs Go, Rust and kubectl.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

stage() { # stage NAME CMD...: run one stage, print how long it took
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "==> $name: $((SECONDS - t0)) s"
}

# Go and cargo where the machine image installs them, in case the caller's PATH lacks them.
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export FLOTILLA_E2E=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A fresh clone builds once: incremental caches would only double the target directory's size.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# The dashboard's browser tests (e2e/tests/dashboard.rs) drive Debian's Chromium with
# playwright-core: install both when missing, and fail here (not skip later) when that fails.
browser_deps() {
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  if [[ ! -x /usr/bin/chromium ]] || ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing chromium, node and npm from Debian for the dashboard browser tests"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium nodejs npm >/dev/null
  fi
  [[ -x /usr/bin/chromium ]] || { echo "error: /usr/bin/chromium is still missing" >&2; return 1; }
  /usr/bin/chromium --version
  (cd e2e/browser && npm ci --no-audit --no-fund --loglevel=error)
}

# The Helm charts (charts/*), linted with the helm that e2e/build-tools.sh builds; the agent chart
# also with the values it refuses to render without, in both RBAC modes.
helm_lint() {
  local helm
  helm="$(e2e/build-tools.sh | tail -n1)/helm"
  [[ -x $helm ]] || { echo "error: $helm is missing: e2e/build-tools.sh should have built it" >&2; return 1; }
  "$helm" lint --strict charts/flotilla-hub
  "$helm" lint --strict charts/flotilla-hub --set hub.watchNamespace=apps,ingress.enabled=true,serviceMonitor.enabled=true
  local mode
  for mode in cluster namespaced; do
    "$helm" lint --strict charts/flotilla-agent \
      --set hub.url=https://hub.example.com:7443,hub.caCert=x,bootstrapToken.value=t,rbac.mode=$mode
  done
  "$helm" lint --strict charts/flotilla-agent \
    --set hub.url=https://hub.example.com:7443,hub.caCert=x,metrics.enabled=true,metrics.serviceMonitor.enabled=true
}

stage "build control-plane tools" e2e/build-tools.sh
stage "helm lint charts/*" helm_lint
stage "browser test dependencies" browser_deps
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "cargo test" cargo test --workspace --no-fail-fast
echo "==> target directory: $(du -sh target 2>/dev/null | cut -f1)"
echo "==> all stages passed in $SECONDS s"
