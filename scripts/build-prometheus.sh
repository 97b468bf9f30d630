#!/usr/bin/env bash
# Builds prometheus and promtool from the Prometheus Go module (github.com/prometheus/
# prometheus, whose v0.3XX.Y tags are Prometheus 3.XX.Y) for the monitoring tests: the
# chart's alert rules are checked and unit-tested with promtool, and a real Prometheus
# scrapes a running smtp-node and operator. Service discovery is left out
# (remove_all_sd): the tests scrape static targets. The binaries are cached under a key
# made of the version and the Go version, so a second run returns at once.
# Prints the binary directory as its last line.
set -euo pipefail
export PATH="/usr/local/go/bin:$PATH"

PROMETHEUS_VERSION=v0.316.0
cache="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
key=$(echo "$PROMETHEUS_VERSION remove_all_sd $(go env GOVERSION)" | sha256sum | cut -c1-16)
bin="$cache/prometheus-bin/$key"

if [ -f "$bin/.complete" ]; then
  echo "prometheus binaries cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"

start=$(date +%s)
echo "building prometheus and promtool $PROMETHEUS_VERSION..." >&2
module=github.com/prometheus/prometheus
# v0.316.0 is Prometheus 3.16.0.
minor_patch=${PROMETHEUS_VERSION#v0.}
version="3.$(( ${minor_patch%%.*} - 300 )).${minor_patch#*.}"
# `go install pkg@version` builds outside any module, with the module's own go.mod.
env GOBIN="$bin" GOFLAGS= CGO_ENABLED=0 go install -tags remove_all_sd \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version" \
  "$module/cmd/prometheus@$PROMETHEUS_VERSION" "$module/cmd/promtool@$PROMETHEUS_VERSION" >&2
"$bin/promtool" --version >&2
echo "built prometheus and promtool in $(( $(date +%s) - start ))s" >&2
touch "$bin/.complete"
echo "$bin"
