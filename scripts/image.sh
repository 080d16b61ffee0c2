#!/usr/bin/env bash
# Builds the hawser image without a container registry: the static binary on this host
# (x86_64-unknown-linux-musl), then Containerfile's scratch stages only (--target prebuilt:
# nothing pulled), with buildah; then checks the image's user, entrypoint and contents.
# Usage: scripts/image.sh [TAG]   (default hawser:dev). docs/deploy.md, "Container image".
# Needs: rustup's x86_64-unknown-linux-musl target, Debian's musl-tools, protobuf-compiler
# and buildah (installed here with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-hawser:dev}"
target=x86_64-unknown-linux-musl

fail() { echo "image.sh: $*" >&2; exit 1; }
missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v buildah >/dev/null || missing+=(buildah)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "image.sh: installing ${missing[*]}"
    { $sudo apt-get install -y "${missing[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${missing[@]}"; }; } >/dev/null ||
        fail "${missing[*]} missing and could not be installed: apt-get install ${missing[*]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" ||
    fail "the $target target is missing and could not be added: rustup target add $target"

cargo build --release --locked --target "$target" --bin hawser
binary="target/$target/release/hawser"
# Static, or the scratch image could not run it.
if command -v file >/dev/null && file "$binary" | grep -q "dynamically linked"; then
    fail "$binary is dynamically linked: $(file -b "$binary")"
fi
mkdir -p target/image
cp /etc/ssl/certs/ca-certificates.crt target/image/ca-certificates.crt ||
    fail "no /etc/ssl/certs/ca-certificates.crt to put in the image: apt-get install ca-certificates"

# vfs storage and chroot isolation: no overlay mounts or user namespaces needed, so this
# also runs as root inside an unprivileged container (as on the machines this was built on).
storage=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
buildah "${storage[@]}" build --isolation chroot --layers=false --target prebuilt \
    -f Containerfile -t "$tag" . ||
    fail "buildah build failed (see above); docs/deploy.md lists what this needs"

# The image as built: the numeric non-root user, the one binary as entrypoint, nothing else.
config=$(buildah "${storage[@]}" inspect --type image --format '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}' "$tag")
[ "$config" = '65532:65532|[/usr/local/bin/hawser]' ] || fail "unexpected image config (user|entrypoint): $config"
container=$(buildah "${storage[@]}" from "$tag")
trap 'buildah "${storage[@]}" umount "$container" >/dev/null 2>&1; buildah "${storage[@]}" rm "$container" >/dev/null' EXIT
# Mounting needs root, or (rootless) the whole script run as `buildah unshare scripts/image.sh`.
mnt=$(buildah "${storage[@]}" mount "$container") ||
    fail "cannot mount the image to list its files: run as root, or as buildah unshare scripts/image.sh"
files=$(cd "$mnt" && find . -type f | sort)
expected=$'./etc/ssl/certs/ca-certificates.crt\n./usr/local/bin/hawser'
[ "$files" = "$expected" ] || fail "unexpected files in the image: $files"
buildah "${storage[@]}" umount "$container" >/dev/null

# And it runs there: the static binary starts; as the image's user it may not write to / (not
# root); there is no shell.
run() { buildah "${storage[@]}" run --isolation chroot "$container" -- "$@" 2>&1; }
version=$(run /usr/local/bin/hawser --version) || fail "hawser --version failed in the image: $version"
out=$(run /usr/local/bin/hawser token issue --signing-key /k.pem --generate --issuer https://x --audience a --subject s) &&
    fail "the image's user could write to /: it runs as root? $out"
case "$out" in *"Permission denied"*) ;; *) fail "writing to / failed otherwise than for permission: $out" ;; esac
out=$(run /bin/sh -c true) && fail "the image has a shell"
echo "image.sh: built $tag ($version): user 65532:65532 (not root: may not write /), entrypoint /usr/local/bin/hawser, no shell; files: $(echo "$files" | tr '\n' ' ')"
