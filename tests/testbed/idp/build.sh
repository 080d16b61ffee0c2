#!/usr/bin/env bash
# Builds the end-to-end tests' OpenID provider (main.go beside this script, on zitadel/oidc v3's
# example provider at the version go.mod pins) into OUTDIR/hawser-test-idp. The Rust test support
# calls this once per change of its inputs, under the test bed's build lock.
# Usage: tests/testbed/idp/build.sh OUTDIR
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUTDIR}")
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "idp/build.sh: Go is not installed (need go >= $(sed -n 's/^go //p' go.mod)); install it from your distribution or go.dev" >&2; exit 1; }
mkdir -p "$out"
go build -trimpath -o "$out/hawser-test-idp.tmp" .
mv "$out/hawser-test-idp.tmp" "$out/hawser-test-idp"
echo "idp/build.sh: built the test OpenID provider ($(go list -m -f '{{.Path}} {{.Version}}' github.com/zitadel/oidc/v3)) in $out" >&2
