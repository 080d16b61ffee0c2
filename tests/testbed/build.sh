#!/usr/bin/env bash
# Builds the test bed's binaries into OUTDIR: kube-apiserver and kubectl from
# the pinned Kubernetes release, the etcd server that release requires, and
# the test kubelet and reaper. The Rust test support calls this once per
# change of the inputs (cached under target/testbed, behind a file lock).
# Usage: tests/testbed/build.sh OUTDIR
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUTDIR}")
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "build.sh: Go is not installed (need go >= $(sed -n 's/^go //p' go.mod)); install it from your distribution or go.dev" >&2; exit 1; }
mkdir -p "$out"

k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${k8s_version#v1.}; minor=${minor%%.*}
# What `kubectl version` reports, as the release's own build stamps it.
stamp="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp="$stamp ${stamp//k8s.io\/component-base\/version/k8s.io/client-go/pkg/version}"

go build -trimpath -ldflags "-s -w $stamp" -o "$out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
(cd kubelet && go build -trimpath -ldflags "-s -w" -o "$out/" ./cmd/testkubelet ./cmd/reaper)
echo "build.sh: built kube-apiserver and kubectl $k8s_version, etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3), testkubelet, reaper in $out" >&2
