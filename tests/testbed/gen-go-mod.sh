#!/usr/bin/env bash
# Regenerates the staging-module replace block of go.mod from the pinned
# Kubernetes release's own go.mod, so the list is never typed by hand.
# k8s.io/kubernetes requires each staging module at v0.0.0, which the module
# proxy does not serve; release v1.N.P pairs with staging v0.N.P.
# Usage: ./gen-go-mod.sh [v1.N.P]   (default: the version go.mod pins)
set -euo pipefail
cd "$(dirname "$0")"
k8s_version=${1:-$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\)\( \/\/ indirect\)\{0,1\}$/\1/p' go.mod)}
[ -n "$k8s_version" ] || { echo "usage: $0 v1.N.P (or pin k8s.io/kubernetes in go.mod first)" >&2; exit 2; }
staging_version="v0.${k8s_version#v1.}"
upstream_mod=$(go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
[ -f "$upstream_mod" ] || { echo "could not download k8s.io/kubernetes@$k8s_version's go.mod" >&2; exit 1; }

block=$(sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\t\1 => \1 '"$staging_version"'#p' "$upstream_mod")
[ -n "$block" ] || { echo "no staging replaces found in $upstream_mod" >&2; exit 1; }

# In each module of the test bed, drop the old generated block and append the new one.
for mod in go.mod kubelet/go.mod; do
  awk '/^\/\/ BEGIN generated staging replaces/{skip=1} !skip{print} /^\/\/ END generated staging replaces/{skip=0}' "$mod" > "$mod.new"
  {
    echo "// BEGIN generated staging replaces (gen-go-mod.sh from k8s.io/kubernetes@$k8s_version)"
    echo "replace ("
    echo "$block"
    echo ")"
    echo "// END generated staging replaces"
  } >> "$mod.new"
  mv "$mod.new" "$mod"
  echo "$mod: wrote $(echo "$block" | wc -l) staging replaces at $staging_version" >&2
done
echo "now run 'go mod tidy' in . and in kubelet/" >&2
