#!/usr/bin/env bash
# Packaging check: `cargo package` makes a .crate that holds what it needs (build.rs, proto/,
# Cargo.lock, LICENSE; no target/), and the CLI builds from that .crate alone, in a fresh
# directory with a fresh target dir and no network.
#
# Under CI (CI=true, a clean clone) the work tree must be clean; elsewhere a dirty tree is
# packaged as it is (--allow-dirty). Takes about a minute on 2 cores (a debug build of the CLI
# and its dependencies from scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

dirty=()
if [ "${CI:-}" != true ]; then
  dirty=(--allow-dirty)
fi

start=$SECONDS
# --no-verify: the verification is the build from the unpacked .crate below (cargo's own would
# build the same again, in the work tree's target dir).
cargo package --all-features --locked --no-verify "${dirty[@]}"

version=$(cargo pkgid | sed 's/.*[#@]//')
crate="${CARGO_TARGET_DIR:-target}/package/jumpstarter-router-$version.crate"
[ -f "$crate" ] || { echo "package.sh: no $crate" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
src="$tmp/jumpstarter-router-$version"

# What the .crate must and must not hold.
list=$(cd "$src" && find . -type f | sed 's|^\./||' | sort)
for f in Cargo.toml Cargo.lock build.rs LICENSE README.md src/lib.rs proto/jumpstarter/v1/router.proto; do
  grep -qxF "$f" <<<"$list" || { echo "package.sh: the .crate lacks $f" >&2; exit 1; }
done
if grep -E '^(target|\.git)/' <<<"$list"; then
  echo "package.sh: the .crate holds the files above, which it must not" >&2
  exit 1
fi
echo "package.sh: $(wc -l <<<"$list") files, $(du -k "$crate" | cut -f1) KiB: $crate"

# Build from the .crate's contents alone: its own Cargo.lock, no network, a target dir of its
# own outside the sources; build.rs must not write into the sources.
before=$(cd "$src" && find . -type f -exec sha256sum {} + | sort)
host=$(rustc -vV | sed -n 's/^host: //p')
(cd "$src" && cargo fetch --locked --target "$host" >/dev/null)
# No debug info: this build is only a check, and links faster without.
(cd "$src" && CARGO_TARGET_DIR="$tmp/target" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo build --features cli --locked --offline)
after=$(cd "$src" && find . -type f -exec sha256sum {} + | sort)
if [ "$before" != "$after" ]; then
  echo "package.sh: the build changed the packaged sources:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
"$tmp/target/debug/jumpstarter-router" serve --help >/dev/null
"$tmp/target/debug/jumpstarter-router" --version

echo "package.sh: the .crate builds on its own ($((SECONDS - start)) s)"
