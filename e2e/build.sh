#!/usr/bin/env bash
# Builds the e2e control plane from Go modules: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and etcd from this module (k8s.io/kubernetes with its staging
# modules), kwok and helm with `go install`, and cert-manager's controller from the module
# in certmanager/ with the CRDs rendered from the Helm chart in cert-manager's module. The
# binaries are cached under a key made of both modules' go.mod and go.sum, the
# cert-manager start-up source and the tool versions, so a second run returns at once.
# Prints the binary directory as its last line.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"

KWOK_VERSION=v0.7.0
HELM_VERSION=v3.22.0
# The real node: container runtime, OCI runtime, CNI plugins and the CRI client.
CONTAINERD_VERSION=v2.3.7
RUNC_VERSION=v1.5.3
CNI_PLUGINS_VERSION=v1.10.0
CRICTL_VERSION=v1.37.0
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
CERT_MANAGER_MODULE=github.com/cert-manager/cert-manager
CERT_MANAGER_VERSION=$(awk -v m="$CERT_MANAGER_MODULE" '$1 == m && $2 ~ /^v/ {print $2; exit}' certmanager/go.mod)
[ -n "$CERT_MANAGER_VERSION" ] || { echo "certmanager/go.mod does not require $CERT_MANAGER_MODULE" >&2; exit 1; }
cache="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
key=$(cat go.mod go.sum certmanager/go.mod certmanager/go.sum certmanager/*.go \
  <(echo "$KWOK_VERSION $HELM_VERSION $CONTAINERD_VERSION $RUNC_VERSION $CNI_PLUGINS_VERSION" \
    "$CRICTL_VERSION $(go env GOVERSION)") | sha256sum | cut -c1-16)
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

timed "control plane and kubelet ($K8S_VERSION)" go build -ldflags "$ldflags" -o "$bin/" ./cmd/...
timed "kwok $KWOK_VERSION" env GOBIN="$bin" GOFLAGS= go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
timed "helm $HELM_VERSION" env GOBIN="$bin" GOFLAGS= go install -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

# The real node's runtime. containerd and the CNI plugins are pure Go; runc needs cgo and
# libseccomp (Debian's libseccomp-dev) for the `seccomp` tag: pods run with the
# RuntimeDefault profile. The shim and runc must sit next to containerd (it finds the shim
# on PATH). CNI plugins go to cni/ so containerd's bin_dirs holds only plugins.
cd_mod="github.com/containerd/containerd/v2"
timed "containerd $CONTAINERD_VERSION" env GOBIN="$bin" GOFLAGS= CGO_ENABLED=0 go install \
  -ldflags "-s -w -X $cd_mod/version.Version=$CONTAINERD_VERSION" \
  "$cd_mod/cmd/containerd@$CONTAINERD_VERSION" "$cd_mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "$cd_mod/cmd/ctr@$CONTAINERD_VERSION"
timed "runc $RUNC_VERSION" env GOBIN="$bin" GOFLAGS= CGO_ENABLED=1 go install -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
mkdir -p "$bin/cni"
timed "CNI plugins $CNI_PLUGINS_VERSION" env GOBIN="$bin/cni" GOFLAGS= CGO_ENABLED=0 go install -ldflags "-s -w" \
  "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION"
timed "crictl $CRICTL_VERSION" env GOBIN="$bin" GOFLAGS= CGO_ENABLED=0 go install -ldflags "-s -w" \
  "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"

# cert-manager publishes its controller `main` as a nested module that is not on the
# proxy; certmanager/ starts the controllers of the root module (see its main.go).
timed "cert-manager controller $CERT_MANAGER_VERSION" sh -c "cd certmanager && go build \
  -ldflags '-s -w -X $CERT_MANAGER_MODULE/pkg/util.AppVersion=$CERT_MANAGER_VERSION' \
  -o '$bin/cert-manager-controller' ."

# The CRDs as a release installs them: the chart's templates, rendered with CRDs enabled.
# The chart in the module carries v0.0.0 where the release tool writes the version.
render_cert_manager_crds() {
  local dir tmp
  dir=$(cd certmanager && go mod download -json "$CERT_MANAGER_MODULE@$CERT_MANAGER_VERSION" \
    | awk -F'"' '$2 == "Dir" {print $4}')
  [ -d "$dir/deploy/charts/cert-manager" ] || { echo "no Helm chart in $dir" >&2; return 1; }
  tmp=$(mktemp -d)
  cp -r "$dir/deploy/charts/cert-manager" "$tmp/"
  chmod -R u+w "$tmp"
  sed -i "s/^version: v0.0.0\$/version: $CERT_MANAGER_VERSION/; s/^appVersion: v0.0.0\$/appVersion: $CERT_MANAGER_VERSION/" \
    "$tmp/cert-manager/Chart.yaml"
  local only=()
  for f in "$tmp"/cert-manager/templates/crd-*.yaml; do only+=(--show-only "templates/$(basename "$f")"); done
  "$bin/helm" template cert-manager "$tmp/cert-manager" --namespace cert-manager \
    --kube-version "${K8S_VERSION#v}" --set crds.enabled=true --set crds.keep=false "${only[@]}" \
    >"$bin/cert-manager-crds.yaml"
  rm -rf "$tmp"
  [ "$(grep -c '^kind: CustomResourceDefinition$' "$bin/cert-manager-crds.yaml")" -ge 6 ] \
    || { echo "rendered fewer than 6 cert-manager CRDs" >&2; return 1; }
}
timed "cert-manager CRDs $CERT_MANAGER_VERSION" render_cert_manager_crds
touch "$bin/.complete"
echo "$bin"
