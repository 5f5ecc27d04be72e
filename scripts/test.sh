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

stage "build control-plane tools" e2e/build-tools.sh
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "cargo test" cargo test --workspace --no-fail-fast
echo "==> all stages passed in $SECONDS s"
