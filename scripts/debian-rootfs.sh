#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) root filesystem as a tar with mmdebstrap,
# cached by its package list, and copies it to OUT. The e2e tests turn it
# into a one-layer OCI image (imported into Ember's image store) for the
# image and sandbox tests.
#
# Usage: debian-rootfs.sh OUT
#
# Cache (EMBER_CACHE, default /var/cache/ember):
#   rootfs/debian-<key>.tar     key: a hash of the suite, variant and packages
set -euo pipefail

readonly SUITE=bookworm
readonly VARIANT=essential
# bash for E2B's SDK (commands run as /bin/bash -l -c), python3 (with its
# standard library: uuid, urllib) for the sandbox tests, iputils-ping for the
# network tests, ca-certificates and iproute2 as a real image would have.
readonly PACKAGES=bash,python3,iproute2,iputils-ping,ca-certificates

out=${1:?usage: $0 OUT}
cache=${EMBER_CACHE:-/var/cache/ember}
log() { printf 'debian-rootfs: %s\n' "$*" >&2; }

key=$(printf '%s %s %s\n' "$SUITE" "$VARIANT" "$PACKAGES" | sha256sum | cut -c1-16)
tarball=$cache/rootfs/debian-$key.tar
if [[ ! -f $tarball ]]; then
	command -v mmdebstrap >/dev/null || { log "error: mmdebstrap not installed (make setup)"; exit 1; }
	log "building $SUITE ($VARIANT + $PACKAGES) with mmdebstrap (about a minute)"
	mkdir -p "$cache/rootfs"
	tmp=$(mktemp "$cache/rootfs/.debian-XXXXXX.tar")
	trap 'rm -f "$tmp"' EXIT
	mmdebstrap --quiet --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$tmp"
	mv "$tmp" "$tarball"
	trap - EXIT
fi
mkdir -p "$(dirname "$out")"
cp --reflink=auto "$tarball" "$out.tmp"
mv "$out.tmp" "$out"
