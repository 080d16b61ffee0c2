#!/usr/bin/env bash
# Fuzz smoke (docs/fuzzing.md): build every cargo-fuzz target in fuzz/ and run each for SECONDS
# (default 10), starting from its seeds in fuzz/seeds/TARGET copied to a temporary corpus, so the
# repository stays clean. Crash inputs are kept in fuzz/artifacts/TARGET/.
# Exits non-zero if a target fails to build or finds a crash, leak, timeout or out-of-memory.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "fuzz: $*" >&2; exit 1; }
seconds="${1:-10}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || fail "usage: scripts/fuzz.sh [SECONDS per target, default 10]"
command -v rustup >/dev/null || fail "rustup is missing: cargo-fuzz needs a nightly toolchain; install Rust with rustup (https://rustup.rs)"
rustup run nightly rustc --version >/dev/null 2>&1 || fail "the nightly toolchain is missing: run 'rustup toolchain install nightly'"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; running 'cargo install cargo-fuzz --locked'"
    cargo install cargo-fuzz --locked || fail "could not install cargo-fuzz"
fi

# cargo fuzz has no --locked: check here that fuzz/Cargo.lock needs no change, as CI does for Cargo.lock.
cargo +nightly fetch --locked --quiet --manifest-path fuzz/Cargo.toml ||
    fail "fuzz/Cargo.lock is out of date (did Cargo.toml change?): run 'cargo +nightly metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null' and commit fuzz/Cargo.lock"

mapfile -t targets < <(cargo +nightly fuzz list)
((${#targets[@]} > 0)) || fail "cargo fuzz list found no targets in fuzz/"
echo "fuzz: building ${targets[*]} ($(cargo +nightly --version))"
cargo +nightly fuzz build || fail "the fuzz targets do not build"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    mkdir -p "$corpus"
    if [[ -d "fuzz/seeds/$target" ]]; then
        cp "fuzz/seeds/$target"/* "$corpus"/
    fi
    args=(-max_total_time="$seconds")
    if [[ -f "fuzz/dicts/$target.dict" ]]; then
        args+=(-dict="fuzz/dicts/$target.dict")
    fi
    log="$work/$target.log"
    if cargo +nightly fuzz run "$target" "$corpus" -- "${args[@]}" >"$log" 2>&1; then
        # libFuzzer's last status line: "#RUNS DONE cov: .. ft: .. corp: .. exec/s: .. rss: ..".
        stats="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | tr -s '[:space:]' ' ')"
        echo "fuzz: $target ok for ${seconds}s: ${stats:-no stats line}"
    else
        failed+=("$target")
        echo "fuzz: $target FAILED; the end of its output:" >&2
        tail -n 60 "$log" >&2
        echo "fuzz: $target: the crashing input is in fuzz/artifacts/$target/; reproduce with 'cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>'" >&2
    fi
done

((${#failed[@]} == 0)) || fail "${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
