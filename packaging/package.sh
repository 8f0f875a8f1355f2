#!/usr/bin/env bash
# Builds the release tarball from a built host binary and guest component:
#   packaging/package.sh BINARY GUEST OUT_DIR
# writes OUT_DIR/campaign-push-<version>-<arch>-linux.tar.gz (and its .sha256) and prints its path.
# `make dist` calls it with the release build; tests/dist.rs with the build under test.
set -euo pipefail

binary=$1
guest=$2
out=$3
root=$(cd "$(dirname "$0")/.." && pwd)

# "campaign-push 0.1.0 (git …, WIT world …)": the release is the second word.
version_line=$("$binary" --version)
version=$(awk '{print $2}' <<<"$version_line")
name="campaign-push-${version}-$(uname -m)-linux"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
install -d "$dir/bin" "$dir/lib" "$dir/etc" "$dir/systemd"
install -m 0755 "$binary" "$dir/bin/campaign-push"
install -m 0644 "$guest" "$dir/lib/guest_transform.wasm"
(cd "$dir/lib" && sha256sum guest_transform.wasm >guest_transform.wasm.sha256)
install -m 0644 "$root/config/campaign-push.example.toml" "$dir/etc/campaign-push.example.toml"
install -m 0644 "$root/packaging/campaign-push.service" "$dir/systemd/campaign-push.service"
install -m 0644 "$root/packaging/INSTALL.md" "$dir/INSTALL.md"
printf '%s\n' "$version_line" >"$dir/VERSION"

mkdir -p "$out"
tarball="$out/$name.tar.gz"
tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$tarball"
