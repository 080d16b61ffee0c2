#!/usr/bin/env bash
# Builds helm into OUTDIR/helm from the Go module beside this script (go.mod pins
# helm.sh/helm/v3 and, through its go.sum, every dependency at the versions helm's own release
# uses), stamped with that version as helm's release build stamps it. The Rust test support calls
# this once per change of its inputs, apart from the Kubernetes test bed's build, under the same lock.
# Usage: tests/testbed/helm/build.sh OUTDIR
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUTDIR}")
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "helm/build.sh: Go is not installed (need go >= $(sed -n 's/^go //p' go.mod)); install it from your distribution or go.dev" >&2; exit 1; }
mkdir -p "$out"
version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
# As helm's Makefile does: the Kubernetes version `helm template` and `helm lint` assume (without
# it, v1.20) is that of the client-go it builds with, v0.N.P -> 1.N.
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
minor=${client_go#v0.}; minor=${minor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
go build -trimpath -ldflags "$ldflags" -o "$out/helm.tmp" helm.sh/helm/v3/cmd/helm
mv "$out/helm.tmp" "$out/helm"
echo "helm/build.sh: built helm $version (Kubernetes 1.$minor by default) in $out" >&2
