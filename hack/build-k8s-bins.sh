#!/usr/bin/env bash
# Builds the local control-plane binaries from the Go module proxy into a cache
# outside the repository, keyed by their versions. Idempotent: a second run only
# checks that every binary is present.
#
#   SLM_KUBE_BIN_DIR=/path   use binaries already there (envtest assets, a package
#                            manager's binaries); nothing is built if all are present.
#   SLM_CACHE_DIR=/path      where the versioned cache lives (default ~/.cache/slm-operator)
#
# Prints the folder holding the binaries as its last line.
set -euo pipefail

K8S_VERSION=v1.36.3
K8S_STAGING_VERSION=v0.36.3
ETCD_VERSION=v3.6.14
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

# kubelet and kube-proxy run the local real node (hack/slm_dev/realnode.py).
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
BINARIES=(etcd "${KUBE_CMDS[@]}" kwok helm)

log() { printf '[cluster-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() {
  local dir=$1 b
  for b in "${BINARIES[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ -f "$dir/kwok-stages.yaml" ]
}

if [ -n "${SLM_KUBE_BIN_DIR:-}" ]; then
  if have_all "$SLM_KUBE_BIN_DIR"; then
    log "using existing binaries in SLM_KUBE_BIN_DIR=$SLM_KUBE_BIN_DIR"
    echo "$SLM_KUBE_BIN_DIR"; exit 0
  fi
  log "SLM_KUBE_BIN_DIR=$SLM_KUBE_BIN_DIR lacks some of: ${BINARIES[*]} kwok-stages.yaml; building those into it"
  OUT=$SLM_KUBE_BIN_DIR
else
  OUT=${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/kube-bins/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION
fi

if have_all "$OUT"; then
  log "cached: $OUT"
  echo "$OUT"; exit 0
fi

command -v go >/dev/null || { log "error: Go is required (go 1.26+) to build the control-plane binaries"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
mkdir -p "$OUT"
# One build at a time (make test, the demo and the chart tests may all call this): a second caller
# waits for the first and then finds the binaries there.
exec 9>"$OUT.lock"
flock 9
if have_all "$OUT"; then
  log "cached (built by a concurrent run): $OUT"
  echo "$OUT"; exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)

build_etcd() {
  [ -x "$OUT/etcd" ] && return 0
  log "building etcd $ETCD_VERSION"
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  printf 'module local.test/etcd-bin\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  printf 'package tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod tidy >/dev/null 2>&1 || go get go.etcd.io/etcd/server/v3@"$ETCD_VERSION"
  go build -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
}

build_kubernetes() {
  local need=0 b
  for b in "${KUBE_CMDS[@]}"; do [ -x "$OUT/$b" ] || need=1; done
  [ "$need" = 1 ] || return 0
  log "building Kubernetes $K8S_VERSION (${KUBE_CMDS[*]}); the slow part"
  mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # local paths, which a dependent module ignores: pin each to the published tag.
  local gomod
  gomod=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    printf 'module local.test/kube-bins\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nrequire k8s.io/kubernetes %s\n\n' "$K8S_VERSION"
    sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/.*#replace \1 => \1 '"$K8S_STAGING_VERSION"'#p' "$gomod"
  } > go.mod
  cat > tools.go <<TOOLS
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
TOOLS
  log "resolving Kubernetes modules"
  go mod tidy
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for b in "${KUBE_CMDS[@]}"; do
    [ -x "$OUT/$b" ] && continue
    log "compiling $b"
    go build -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$OUT/$b.tmp" "$OUT/$b"
  done
}

build_kwok() {
  if [ ! -x "$OUT/kwok" ]; then
    log "building kwok $KWOK_VERSION"
    GOBIN="$WORK/kwok-bin" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    mv "$WORK/kwok-bin/kwok" "$OUT/kwok"
  fi
  if [ ! -f "$OUT/kwok-stages.yaml" ]; then
    # The default stages kwokctl uses, read from the kwok module in the module cache.
    local dir f
    dir=$(cd "$WORK" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo '---'; cat "$dir/kustomize/stage/$f"
    done > "$OUT/kwok-stages.yaml.tmp"
    mv "$OUT/kwok-stages.yaml.tmp" "$OUT/kwok-stages.yaml"
  fi
}

build_helm() {
  [ -x "$OUT/helm" ] && return 0
  log "building helm $HELM_VERSION"
  local ver=${HELM_VERSION#v} ldflags
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  GOBIN="$WORK/helm-bin" go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$WORK/helm-bin/helm" "$OUT/helm"
  : "$ver"
}

build_etcd
build_kwok
build_helm
build_kubernetes

have_all "$OUT" || { log "error: build finished but binaries are missing in $OUT"; exit 1; }
log "done in $(( $(date +%s) - started ))s: $OUT"
echo "$OUT"
