#!/usr/bin/env bash
# Start and stop real Kubernetes control planes on 127.0.0.1 (see e2e/src/controlplane).
#
#   e2e/cluster.sh up NAME       start NAME (idempotent); the last line printed is its kubeconfig
#   e2e/cluster.sh down NAME     stop NAME, leaving no process, port or directory behind
#   e2e/cluster.sh down --all    stop every cluster
#   e2e/cluster.sh list          clusters, URLs, state and resident memory
#
# The first run builds kube-apiserver, etcd and friends from the Go module proxy into
# ~/.cache/flotilla (override with FLOTILLA_CACHE_DIR); clusters live in /tmp/flotilla-e2e
# (override with FLOTILLA_RUN_DIR).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --quiet -p flotilla-e2e --bin testcluster
exec "${CARGO_TARGET_DIR:-$root/target}/debug/testcluster" "$@"
