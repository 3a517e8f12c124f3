#!/usr/bin/env bash
# Builds the hookgate image without pulling a base image: FROM scratch, with an already built `gateway`
# binary and the shared libraries it links (as `ldd` lists them), plus the runtime configuration of
# ../Dockerfile (the lines between its `BEGIN runtime-config` and `END runtime-config` markers, copied
# unchanged). For machines that cannot reach a registry; elsewhere, build ../Dockerfile.
#
#   cargo build --release --bin gateway
#   deploy/build-image-offline.sh [BINARY [TAG]]      # default: target/release/gateway localhost/hookgate:dev
#
# Environment: CONTAINER_ENGINE (default podman; docker works too), VERSION and REVISION
# (the image's OCI labels). Prints the image id on the last line of standard output.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
binary="${1:-${CARGO_TARGET_DIR:-$root/target}/release/gateway}"
tag="${2:-localhost/hookgate:dev}"
engine="${CONTAINER_ENGINE:-podman}"

die() {
  printf 'error: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '  help: %s\n' "$2" >&2
  exit 1
}

[ -x "$binary" ] || die "no executable at \`$binary\`" "build it with \`cargo build --release --bin gateway\`, or pass its path"
command -v "$engine" >/dev/null || die "\`$engine\` is not installed" "install podman (\`apt-get install podman\`) or set CONTAINER_ENGINE"
command -v ldd >/dev/null || die "\`ldd\` is not installed" "install libc-bin"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/var/lib/hookgate" "$rootfs/tmp" "$rootfs/etc"
install -m 0755 "$binary" "$rootfs/usr/local/bin/gateway"

# Every library the binary loads, at the path the dynamic loader looks for it, plus the loader itself.
# A statically linked binary has none (`ldd` says "not a dynamic executable").
if ldd_out="$(ldd "$binary" 2>&1)"; then
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done < <(printf '%s\n' "$ldd_out" | awk '
    /not found/ { print "MISSING " $1; next }
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }')
  if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
    die "\`$binary\` links libraries this machine does not have: $(printf '%s\n' "$ldd_out" | grep 'not found' | tr '\n' ' ')"
  fi
elif ! printf '%s\n' "$ldd_out" | grep -q 'not a dynamic executable'; then
  die "\`ldd $binary\` failed: $ldd_out"
fi
# glibc resolves host names from files then DNS without an nsswitch.conf; name the user for `ps` and logs.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/hookgate:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"

config="$(sed -n '/^# BEGIN runtime-config/,/^# END runtime-config/p' "$root/Dockerfile")"
[ -n "$config" ] || die "no \`runtime-config\` block in \`$root/Dockerfile\`"
{
  printf 'FROM scratch\n'
  printf 'COPY rootfs/ /\n'
  # The data directory belongs to the runtime user; /tmp is world-writable with the sticky bit.
  printf 'COPY --chown=65532:65532 rootfs/var/lib/hookgate /var/lib/hookgate\n'
  printf '%s\n' "$config"
} >"$ctx/Containerfile"
chmod 1777 "$rootfs/tmp"
chmod 0750 "$rootfs/var/lib/hookgate"

"$engine" build -f "$ctx/Containerfile" -t "$tag" \
  --build-arg "VERSION=${VERSION:-dev}" --build-arg "REVISION=${REVISION:-unknown}" "$ctx" >&2
"$engine" image inspect --format '{{.Id}}' "$tag"
