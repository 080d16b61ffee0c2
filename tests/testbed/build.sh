#!/usr/bin/env bash
# Builds the test bed's binaries into OUTDIR: kube-apiserver and kubectl from
# the pinned Kubernetes release, the etcd server that release requires, the
# test kubelet and reaper, and kubectl-1.32 (an older kubectl, from the
# kubectl-1.32 module, for the e2e routes that run the suite with it). The Rust test support calls this once per
# change of the inputs (cached under target/testbed, behind a file lock).
# Usage: tests/testbed/build.sh OUTDIR
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUTDIR}")
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "build.sh: Go is not installed (need go >= $(sed -n 's/^go //p' go.mod)); install it from your distribution or go.dev" >&2; exit 1; }
mkdir -p "$out"

# What `kubectl version` reports for release VERSION (v1.N.P), as the release's own build stamps it.
stamp() {
  local minor=${1#v1.}; minor=${minor%%.*}
  local s="-X k8s.io/component-base/version.gitVersion=$1 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  echo "$s ${s//k8s.io\/component-base\/version/k8s.io/client-go/pkg/version}"
}

k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
go build -trimpath -ldflags "-s -w $(stamp "$k8s_version")" -o "$out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
(cd kubelet && go build -trimpath -ldflags "-s -w" -o "$out/" ./cmd/testkubelet ./cmd/reaper)
# The older kubectl: k8s.io/kubectl v0.N.P is the staging module of release v1.N.P.
old_version=$(cd kubectl-1.32 && go list -m -f '{{.Version}}' k8s.io/kubectl)
old_version=v1.${old_version#v0.}
(cd kubectl-1.32 && go build -trimpath -ldflags "-s -w $(stamp "$old_version")" -o "$out/kubectl-1.32" .)
echo "build.sh: built kube-apiserver and kubectl $k8s_version, etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3), testkubelet, reaper, kubectl-1.32 ($old_version) in $out" >&2
