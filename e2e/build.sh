#!/usr/bin/env bash
# Builds the e2e control plane from Go modules: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and etcd from this module (k8s.io/kubernetes with its staging
# modules), kwok and helm with `go install`. The binaries are cached under a key made of
# go.mod, go.sum and the tool versions, so a second run returns at once.
# Prints the binary directory as its last line.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"

KWOK_VERSION=v0.7.0
HELM_VERSION=v3.22.0
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
cache="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
key=$(cat go.mod go.sum <(echo "$KWOK_VERSION $HELM_VERSION $(go env GOVERSION)") | sha256sum | cut -c1-16)
bin="$cache/e2e-bin/$key"

if [ -f "$bin/.complete" ]; then
  echo "e2e binaries cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"

timed() {
  local name=$1; shift
  local start=$(date +%s)
  echo "building $name..." >&2
  "$@" >&2
  echo "built $name in $(( $(date +%s) - start ))s" >&2
}

# Tools that read the server version misbehave on the default v0.0.0.
ver="k8s.io/component-base/version"
cgver="k8s.io/client-go/pkg/version"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in $ver $cgver; do
  ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
done

timed "control plane ($K8S_VERSION)" go build -ldflags "$ldflags" -o "$bin/" ./cmd/...
timed "kwok $KWOK_VERSION" env GOBIN="$bin" GOFLAGS= go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
timed "helm $HELM_VERSION" env GOBIN="$bin" GOFLAGS= go install -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
touch "$bin/.complete"
echo "$bin"
