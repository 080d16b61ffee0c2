#!/usr/bin/env bash
# Builds the tunnels the load driver compares Hawser with ("peers"), at pinned versions, into
# loadtest/target/peers/bin. Idempotent: a binary already there at the pinned version is kept.
# Needs cargo (rathole, from crates.io) and go >= 1.24 (the others, from the Go module proxy).
#   loadtest/peers/build.sh            # all of them
#   loadtest/peers/build.sh frp chisel # some of them
set -euo pipefail

RATHOLE_VERSION=0.5.0
FRP_VERSION=v0.65.0
CHISEL_VERSION=v1.10.1
# v0.33.0 is served by the module proxy here but its checksum-database entry is not (404), so
# go refuses it; v0.30.3 is the newest release tried that both serve.
KONNECTIVITY_VERSION=v0.30.3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/../target/peers"
bin="$root/bin"
mkdir -p "$bin"
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"

die() { echo "peers/build.sh: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
# A stamp file per peer records the version its binaries were built at.
fresh() { [[ -f "$root/$1.version" && "$(cat "$root/$1.version")" == "$2" ]] && shift 2 && for b in "$@"; do [[ -x "$bin/$b" ]] || return 1; done; }
stamp() { echo "$2" > "$root/$1.version"; }

# `go install module/cmd/x@version` asks the proxy for the module's version list (to check for a
# deprecation), and the proxy reachable here refuses version lists (403) while it serves exact
# versions. So each Go peer is built in a throw-away module that requires the pinned version; this
# also ignores the peer's own `replace` directives (konnectivity has one), exactly as go install
# would refuse them. go_build MODULE VERSION PACKAGE OUTPUT...
GO_EDITS=()
go_build() {
  local module="$1" version="$2"
  shift 2
  local work rc=0
  work="$(mktemp -d)"
  (
    set -e
    cd "$work"
    go mod init hawser-loadtest-peers >/dev/null 2>&1
    go mod edit -require="$module@$version"
    for edit in "${GO_EDITS[@]}"; do go mod edit "$edit"; done
    local args=("$@")
    for ((i = 0; i < ${#args[@]}; i += 2)); do go mod edit -tool="${args[i]}"; done
    go mod tidy
    for ((i = 0; i < ${#args[@]}; i += 2)); do go build -o "$bin/${args[i+1]}" "${args[i]}"; done
  ) || rc=$?
  rm -rf "$work"
  return $rc
}

need_go() {
  have go || die "go not found (looked in PATH and /usr/local/go/bin); install Go >= 1.24 (go mod edit -tool) to build $1"
  export GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0
}

build_rathole() {
  if fresh rathole "$RATHOLE_VERSION" rathole; then echo "rathole $RATHOLE_VERSION: up to date"; return; fi
  have cargo || die "cargo not found; install Rust (rustup) to build rathole"
  echo "rathole $RATHOLE_VERSION: cargo install (a few minutes)"
  # Default features: server + client, TLS/noise/websocket transports; only plain TCP is used.
  # Not --locked: rathole 0.5.0's lock file pins time 0.3.29, which no longer compiles with a
  # current rustc (E0282 in time's format_description); unlocked, cargo takes time >= 0.3.35.
  cargo install --force --version "$RATHOLE_VERSION" --root "$root" rathole \
    || die "cargo install rathole $RATHOLE_VERSION failed (see above)"
  stamp rathole "$RATHOLE_VERSION"
}

build_frp() {
  if fresh frp "$FRP_VERSION" frps frpc; then echo "frp $FRP_VERSION: up to date"; return; fi
  need_go frp
  echo "frp $FRP_VERSION: go build"
  go_build github.com/fatedier/frp "$FRP_VERSION" \
    github.com/fatedier/frp/cmd/frps frps github.com/fatedier/frp/cmd/frpc frpc \
    || die "building frp $FRP_VERSION failed (see above)"
  stamp frp "$FRP_VERSION"
}

build_chisel() {
  if fresh chisel "$CHISEL_VERSION" chisel; then echo "chisel $CHISEL_VERSION: up to date"; return; fi
  need_go chisel
  echo "chisel $CHISEL_VERSION: go build"
  go_build github.com/jpillora/chisel "$CHISEL_VERSION" github.com/jpillora/chisel chisel \
    || die "building chisel $CHISEL_VERSION failed (see above)"
  stamp chisel "$CHISEL_VERSION"
}

build_konnectivity() {
  if fresh konnectivity "$KONNECTIVITY_VERSION" proxy-server proxy-agent; then
    echo "konnectivity $KONNECTIVITY_VERSION: up to date"; return
  fi
  need_go konnectivity
  echo "konnectivity (apiserver-network-proxy) $KONNECTIVITY_VERSION: go build"
  # It requires konnectivity-client v0.0.0 and replaces that with a nested directory, which a
  # module build ignores: take the client module's release of the same version instead.
  local mod=sigs.k8s.io/apiserver-network-proxy
  GO_EDITS=("-replace=$mod/konnectivity-client=$mod/konnectivity-client@$KONNECTIVITY_VERSION")
  go_build sigs.k8s.io/apiserver-network-proxy "$KONNECTIVITY_VERSION" \
    sigs.k8s.io/apiserver-network-proxy/cmd/server proxy-server \
    sigs.k8s.io/apiserver-network-proxy/cmd/agent proxy-agent \
    || die "building konnectivity $KONNECTIVITY_VERSION failed (see above)"
  stamp konnectivity "$KONNECTIVITY_VERSION"
}

peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(rathole frp chisel konnectivity)
for p in "${peers[@]}"; do
  case "$p" in
    rathole|frp|chisel|konnectivity) "build_$p" ;;
    *) die "unknown peer '$p' (known: rathole frp chisel konnectivity)" ;;
  esac
done
echo "peers in $bin:"
ls -1 "$bin"
