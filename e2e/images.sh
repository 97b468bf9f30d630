#!/usr/bin/env bash
# Builds the project's container images without Docker or a registry, as OCI image
# archives that containerd imports:
#
#   localhost/smtpfleet/smtp-node:e2e   the release smtp-node binary
#   localhost/smtpfleet/operator:e2e    the release operator binary
#   registry.k8s.io/pause:3.10.2        a static pause built here (the sandbox image
#                                       containerd is pinned to, so it is never pulled)
#
#   e2e/images.sh build OUTDIR     write OUTDIR/{smtp-node,operator,pause}.tar
#
# Each image has the layout of its Dockerfile's distroless/cc-debian12:nonroot base: the
# binary in /usr/local/bin, the glibc libraries it links (found with ldd),
# ca-certificates, /etc/passwd and /etc/group with the nonroot user, a world-writable
# /tmp; user 65532:65532, the same entrypoint and default command. The layers are written
# with fixed owners and times, so an unchanged binary gives the same image digest.
set -euo pipefail
cd "$(dirname "$0")"
E2E_DIR=$(pwd)
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
NODE_IMAGE=localhost/smtpfleet/smtp-node:e2e
OPERATOR_IMAGE=localhost/smtpfleet/operator:e2e

log() { printf 'images: %s\n' "$*" >&2; }

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# oci_archive OUT NAME ROOTFS CONFIG_JSON: writes an OCI image layout holding one
# uncompressed layer made of ROOTFS, tarred to OUT.
oci_archive() {
  local out=$1 name=$2 rootfs=$3 config=$4
  local layout
  layout=$(mktemp -d)
  mkdir -p "$layout/blobs/sha256"
  tar --create --file "$layout/layer.tar" --directory "$rootfs" --sort=name \
    --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
  local layer_digest layer_size
  layer_digest=$(sha "$layout/layer.tar")
  layer_size=$(size "$layout/layer.tar")
  mv "$layout/layer.tar" "$layout/blobs/sha256/$layer_digest"

  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$layer_digest" >"$layout/config.json"
  local config_digest config_size
  config_digest=$(sha "$layout/config.json")
  config_size=$(size "$layout/config.json")
  mv "$layout/config.json" "$layout/blobs/sha256/$config_digest"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$layout/manifest.json"
  local manifest_digest manifest_size
  manifest_digest=$(sha "$layout/manifest.json")
  manifest_size=$(size "$layout/manifest.json")
  mv "$layout/manifest.json" "$layout/blobs/sha256/$manifest_digest"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$name" "${name##*:}" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  tar --create --file "$out" --directory "$layout" --sort=name --owner=0 --group=0 \
    --numeric-owner --mtime=@0 oci-layout index.json blobs
  rm -rf "$layout"
  log "$name: $(( layer_size / 1024 / 1024 )) MiB layer, sha256:${manifest_digest:0:12} -> $out"
}

# distroless ROOTFS BINARY...: the nonroot distroless/cc layout with the binaries in
# /usr/local/bin and every shared library they load.
distroless() {
  local root=$1; shift
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/home/nonroot" "$root/tmp"
  chmod 1777 "$root/tmp"
  chmod 700 "$root/home/nonroot"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  local bin lib
  for bin in "$@"; do
    install -m 0755 "$bin" "$root/usr/local/bin/$(basename "$bin")"
    # ldd lines: "libx.so => /path (addr)" or "/lib64/ld-linux-x86-64.so.2 (addr)".
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
  chown -R 0:0 "$root"
  chown 65532:65532 "$root/home/nonroot"
}

# The pause binary: Kubernetes' own source from the module the control plane is built
# from, compiled static.
build_pause() {
  local out=$1 dir
  dir=$(go mod download -json k8s.io/kubernetes | awk -F'"' '$2 == "Dir" {print $4}')
  [ -f "$dir/build/pause/linux/pause.c" ] || { log "no pause.c in $dir"; return 1; }
  gcc -Os -static -Wall -Werror -DVERSION=3.10.2 -o "$out" "$dir/build/pause/linux/pause.c"
  strip "$out"
}

build() {
  local out=$1
  mkdir -p "$out"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"
  local started=$(date +%s)
  (cd .. && cargo build -q --release --locked -p smtp-node -p smtpfleet-operator)
  log "release binaries built in $(( $(date +%s) - started ))s"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN

  distroless "$tmp/smtp-node" "$CARGO_TARGET_DIR/release/smtp-node"
  oci_archive "$out/smtp-node.tar" "$NODE_IMAGE" "$tmp/smtp-node" \
    '{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":["/usr/local/bin/smtp-node"],"Cmd":["run","--config","/etc/smtp-node/config/smtp-node.yaml"],"WorkingDir":"/home/nonroot","ExposedPorts":{"2525/tcp":{},"2587/tcp":{},"2465/tcp":{},"8080/tcp":{},"7443/tcp":{}}}'

  distroless "$tmp/operator" "$CARGO_TARGET_DIR/release/operator"
  oci_archive "$out/operator.tar" "$OPERATOR_IMAGE" "$tmp/operator" \
    '{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":["/usr/local/bin/operator"],"Cmd":["run"],"WorkingDir":"/home/nonroot","ExposedPorts":{"8080/tcp":{}}}'

  mkdir -p "$tmp/pause"
  build_pause "$tmp/pause/pause"
  chown -R 0:0 "$tmp/pause"
  oci_archive "$out/pause.tar" "$PAUSE_IMAGE" "$tmp/pause" \
    '{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"}'
}

case "${1:-}" in
  build) [ -n "${2:-}" ] || { echo "usage: $0 build OUTDIR" >&2; exit 2; }; build "$2" ;;
  names) printf '%s\n' "$NODE_IMAGE" "$OPERATOR_IMAGE" "$PAUSE_IMAGE" ;;
  *) echo "usage: $0 build OUTDIR | names" >&2; exit 2 ;;
esac
