#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries the e2e harness runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd, kwok) and `helm` (the hub renders HelmReleases
# with it) from the Go module proxy with the machine's `go`, into a cache directory outside the
# checkout. Idempotent: a tool whose binaries are already in the cache is not rebuilt. Prints the
# bin directory as its last line.
#
#   e2e/build-tools.sh            build what is missing, print the bin directory
#   FLOTILLA_CACHE_DIR=/x ...     use another cache (default: $XDG_CACHE_HOME/flotilla or ~/.cache/flotilla)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${FLOTILLA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flotilla}
bin="$cache/tools/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
work="$cache/tools/work"
logs="$cache/tools/logs"
mkdir -p "$bin" "$work" "$logs"

die() { echo "build-tools: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not on PATH: install Go >= 1.24 (the harness builds kube-apiserver, etcd and kwok with it)"

# One build at a time per cache, even when several test processes ask at once.
exec 9>"$cache/tools/.lock"
flock 9

export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0

# run LOG CMD...: run a build step with its output in LOG; on failure say which step and where the log is.
run() {
  local log=$1; shift
  if ! "$@" >>"$log" 2>&1; then
    echo "build-tools: '$*' failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

build_kubernetes() {
  [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/kube-scheduler" ]] && return
  local v=$KUBERNETES_VERSION minor dir log
  minor=${v#v1.}; minor=${minor%%.*}
  dir="$work/kubernetes-$v"; log="$logs/kubernetes-$v.log"
  : >"$log"
  echo "build-tools: building kube-apiserver, kube-controller-manager and kube-scheduler $v (cold: ~15 min on 2 cores; log: $log)" >&2
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  printf 'module flotilla.dev/e2e-tools/kubernetes\n\ngo 1.24\n' >go.mod
  run "$log" go mod edit -require "k8s.io/kubernetes@$v"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging/...,
  # which a consumer ignores. Replace each with its published twin, read from the release's go.mod.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | jq -r .GoMod) || die "cannot download k8s.io/kubernetes@$v from the Go module proxy"
  local staging
  staging=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | sort -u)
  [[ -n "$staging" ]] || die "found no staging replaces in $gomod"
  for m in $staging; do
    run "$log" go mod edit -replace "$m=$m@v0.$minor.${v##*.}"
  done
  local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version ld="-s -w"
  for p in $pkg $cgo; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  run "$log" go build -trimpath -ldflags "$ld" -o "$dir/out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  mv "$dir/out/kube-apiserver" "$dir/out/kube-controller-manager" "$dir/out/kube-scheduler" "$bin/"
}

build_etcd() {
  [[ -x "$bin/etcd" ]] && return
  local v=$ETCD_VERSION dir="$work/etcd-$ETCD_VERSION" log="$logs/etcd-$ETCD_VERSION.log"
  : >"$log"
  echo "build-tools: building etcd $v (log: $log)" >&2
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  printf 'module flotilla.dev/e2e-tools/etcd\n\ngo 1.24\n' >go.mod
  run "$log" go mod edit -require "go.etcd.io/etcd/server/v3@$v"
  run "$log" go build -trimpath -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3
  mv "$dir/etcd" "$bin/etcd"
}

build_kwok() {
  [[ -x "$bin/kwok" ]] && return
  local v=$KWOK_VERSION log="$logs/kwok-$KWOK_VERSION.log"
  : >"$log"
  echo "build-tools: building kwok $v (log: $log)" >&2
  run "$log" env GOBIN="$bin" GOFLAGS= go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${v#v}" "sigs.k8s.io/kwok/cmd/kwok@$v"
}

# helm is keyed by its own version: it lives in its own directory and is linked into $bin, so a
# new HELM_VERSION rebuilds only helm.
build_helm() {
  local v=$HELM_VERSION dir="$cache/tools/helm-$HELM_VERSION" log="$logs/helm-$HELM_VERSION.log"
  if [[ ! -x "$dir/helm" ]]; then
    : >"$log"
    echo "build-tools: building helm $v (log: $log)" >&2
    mkdir -p "$dir"
    run "$log" env GOBIN="$dir" GOFLAGS= go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" "helm.sh/helm/v3/cmd/helm@$v"
  fi
  ln -sfn "$dir/helm" "$bin/helm"
}

build_etcd
build_kwok
build_kubernetes
build_helm
echo "$bin"
