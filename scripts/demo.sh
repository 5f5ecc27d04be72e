#!/usr/bin/env bash
# The local demo fleet: a management cluster and two workload clusters (each a real
# kube-apiserver + etcd on 127.0.0.1), the flotilla hub, one agent per workload cluster, and a
# local Git repository seeded from examples/fleet that the hub follows.
#
#   scripts/demo.sh          start (or keep) everything and print how to watch and change it
#   scripts/demo.sh down     stop everything the demo started
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

state=${FLOTILLA_DEMO_DIR:-/tmp/flotilla-demo}
workloads=(workload-1 workload-2)

stop_pid() {
  local file=$1
  if [[ -f $file ]]; then
    local pid
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
  fi
}

if [[ ${1:-} == down ]]; then
  for w in "${workloads[@]}"; do stop_pid "$state/agent-$w.pid"; done
  stop_pid "$state/hub.pid"
  for c in mgmt "${workloads[@]}"; do e2e/cluster.sh down "$c" >/dev/null 2>&1 || true; done
  rm -rf "$state"
  echo "demo stopped"
  exit 0
fi

mkdir -p "$state"
echo "==> building flotilla (the first build takes a while)" >&2
cargo build --quiet -p flotilla-hub -p flotilla-agent --bins
bin=$root/target/debug

declare -A kubeconfig
for c in mgmt "${workloads[@]}"; do
  echo "==> starting cluster $c" >&2
  kubeconfig[$c]=$(e2e/cluster.sh up "$c" | tail -n 1)
done
mgmt=${kubeconfig[mgmt]}
k() { kubectl --kubeconfig "$mgmt" "$@"; }

echo "==> installing the flotilla CRDs into mgmt" >&2
"$bin/flotilla" crds | k apply --server-side -f - >/dev/null
k wait --for=condition=Established crd --all --timeout=60s >/dev/null

repo=$state/fleet-repo
if [[ ! -d $repo/.git ]]; then
  echo "==> seeding the Git repository $repo from examples/fleet" >&2
  mkdir -p "$repo"
  cp -r examples/fleet/clusters examples/fleet/infrastructure examples/fleet/apps examples/fleet/README.md "$repo/"
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  git -C "$repo" -c user.name=demo -c user.email=demo@flotilla.invalid commit -q -m "Seed the fleet from examples/fleet"
fi

if ! { [[ -f $state/hub.pid ]] && kill -0 "$(cat "$state/hub.pid")" 2>/dev/null; }; then
  echo "==> starting the hub (log: $state/hub.log)" >&2
  "$bin/flotilla-hub" --kubeconfig "$mgmt" --namespace flotilla-system \
    --registration-listen 127.0.0.1:7441 --delivery-listen 127.0.0.1:7443 \
    --http-listen 127.0.0.1:7480 --cache-dir "$state/cache" >"$state/hub.log" 2>&1 &
  echo $! >"$state/hub.pid"
fi
for _ in $(seq 100); do
  k -n flotilla-system get configmap flotilla-hub >/dev/null 2>&1 && break
  sleep 0.2
done

sed "s#REPO_URL#$repo#" examples/fleet/hub/fleet.yaml | k apply --server-side -f - >/dev/null

declare -A region=([workload-1]=eu [workload-2]=us)
for w in "${workloads[@]}"; do
  if [[ -f $state/agent-$w.pid ]] && kill -0 "$(cat "$state/agent-$w.pid")" 2>/dev/null; then
    continue
  fi
  if ! k get clusters.flotilla.dev "$w" >/dev/null 2>&1; then
    "$bin/flotilla" --kubeconfig "$mgmt" cluster add "$w" \
      --label fleet.example/apps=enabled --label region="${region[$w]}" \
      --var region="${region[$w]}" --write "$state/$w" >/dev/null
  fi
  echo "==> starting the agent of $w (log: $state/agent-$w.log)" >&2
  "$bin/flotilla-agent" --kubeconfig "${kubeconfig[$w]}" run --cluster "$w" \
    --hub "https://localhost:7443" --hub-registration "https://localhost:7441" \
    --hub-ca "$state/$w/ca.crt" --token-file "$state/$w/token" >"$state/agent-$w.log" 2>&1 &
  echo $! >"$state/agent-$w.pid"
done

echo "==> waiting for both deliveries to be ready on both clusters" >&2
ready=no
for _ in $(seq 120); do
  if [[ $(k get deliveries.flotilla.dev -n fleet -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}') == "True True " ]]; then
    ready=yes
    break
  fi
  sleep 1
done
k get clusters.flotilla.dev,deliveries.flotilla.dev -A
[[ $ready == yes ]] || echo "(not ready yet after 2 minutes: see $state/hub.log and $state/agent-*.log)" >&2

cat <<MSG

flotilla demo fleet is up.

  dashboard:         http://127.0.0.1:7480/   (open it in a browser: both clusters, live)
  fleet status:      kubectl --kubeconfig $mgmt get clusters,deliveries -A
  explain a cluster: kubectl --kubeconfig $mgmt describe cluster workload-1
  workload clusters: kubectl --kubeconfig ${kubeconfig[workload-1]} -n podinfo get deploy,cm
                     kubectl --kubeconfig ${kubeconfig[workload-2]} -n podinfo get deploy,cm

  make a change:     cd $repo && sed -i 's/count: 2/count: 3/' apps/production/kustomization.yaml \\
                       && git commit -qam 'production: 3 replicas'
                     (the hub polls every 30s; \`$bin/flotilla --kubeconfig $mgmt reconcile source fleet -n fleet\` fetches now)
  logs:              $state/hub.log, $state/agent-workload-1.log, $state/agent-workload-2.log
  stop everything:   scripts/demo.sh down
MSG
