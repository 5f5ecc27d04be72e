#!/usr/bin/env bash
# The local demo fleet: one management cluster and two workload clusters, each a real
# kube-apiserver + etcd on 127.0.0.1, and how to reach them. Safe to run again: clusters that are
# already up are kept. Stop everything with `e2e/cluster.sh down --all`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

clusters=(mgmt workload-1 workload-2)
declare -A kubeconfig
for c in "${clusters[@]}"; do
  echo "==> starting cluster $c" >&2
  kubeconfig[$c]=$(e2e/cluster.sh up "$c" | tail -n 1)
done

cat <<MSG

flotilla demo fleet is up:

$(for c in "${clusters[@]}"; do printf '  %-11s kubectl --kubeconfig %s get nodes\n' "$c" "${kubeconfig[$c]}"; done)

  management cluster: mgmt; workload clusters: workload-1, workload-2
  list them:          e2e/cluster.sh list
  stop them:          e2e/cluster.sh down --all
MSG
