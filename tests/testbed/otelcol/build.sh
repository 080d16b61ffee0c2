#!/usr/bin/env bash
# Builds the e2e tests' OpenTelemetry Collector into OUTDIR/otelcol with the collector's builder
# (ocb) from builder-config.yaml beside this script; the generated sources go to WORKDIR/src.
# The Rust test support calls this once per change of its inputs (this script, the manifest,
# `go version`), apart from the Kubernetes test bed's build, under the same lock.
# Usage: tests/testbed/otelcol/build.sh OUTDIR WORKDIR
set -euo pipefail
# The builder's release: the same as the manifest's core components.
BUILDER_VERSION=v0.161.0
out=$(realpath -m "${1:?usage: $0 OUTDIR WORKDIR}")
work=$(realpath -m "${2:?usage: $0 OUTDIR WORKDIR}")
manifest=$(realpath "$(dirname "$0")/builder-config.yaml")
command -v go >/dev/null || { echo "otelcol/build.sh: Go is not installed; install it from your distribution or go.dev" >&2; exit 1; }
mkdir -p "$out" "$work"
cd "$work"
# No module above the work dir may take part: the builder writes its own go.mod in src/.
GOWORK=off go run "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" --config "$manifest"
cp "$work/src/otelcol" "$out/otelcol.tmp"
mv "$out/otelcol.tmp" "$out/otelcol"
echo "otelcol/build.sh: built otelcol (builder $BUILDER_VERSION) in $out" >&2
