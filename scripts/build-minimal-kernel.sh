#!/usr/bin/env bash
# Builds Ember's minimal microVM guest kernel from Debian's linux-source-6.1,
# cached under $EMBER_CACHE by a key derived from its inputs.
#
# Usage: build-minimal-kernel.sh FRAGMENT OUTDIR
#   FRAGMENT  kernel config fragment applied over `make tinyconfig`
#   OUTDIR    receives vmlinux, bzImage and config (copied from the cache)
#
# Cache layout (EMBER_CACHE, default /var/cache/ember):
#   src/linux-source-<pkgversion>/      the unpacked source tree (shared)
#   kernel/minimal-<key>/build/         the out-of-tree build directory
#   kernel/minimal-<key>/{vmlinux,bzImage,config}   finished artifacts
# key = sha256(fragment, this script, linux-source-6.1 package version).
set -euo pipefail

readonly SRC_PKG=linux-source-6.1
readonly SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

fragment=${1:?usage: $0 FRAGMENT OUTDIR}
outdir=${2:?usage: $0 FRAGMENT OUTDIR}
cache=${EMBER_CACHE:-/var/cache/ember}
jobs=${KERNEL_JOBS:-$(nproc)}

log() { printf 'build-minimal-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f $fragment ]] || die "config fragment $fragment not found"
[[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL not found (run make setup)"
pkgver=$(dpkg-query -W -f='${Version}' "$SRC_PKG") || die "$SRC_PKG is not installed"

key=$( { cat "$fragment"; cat "${BASH_SOURCE[0]}"; printf '%s\n' "$SRC_PKG=$pkgver"; } | sha256sum | cut -c1-16)
kdir=$cache/kernel/minimal-$key

copy_out() {
	mkdir -p "$outdir"
	local f
	for f in vmlinux bzImage config; do
		cmp -s "$kdir/$f" "$outdir/minimal-$f" || cp "$kdir/$f" "$outdir/minimal-$f"
	done
}

if [[ -f $kdir/vmlinux && -f $kdir/bzImage && -f $kdir/config ]]; then
	log "cached: $kdir"
	copy_out
	exit 0
fi

# Unpack the source once per package version.
src=$cache/src/linux-source-$pkgver
if [[ ! -f $src/.ember-unpacked ]]; then
	log "unpacking $SRC_TARBALL into $src"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xJf "$SRC_TARBALL" -C "$src.tmp" --strip-components=1
	touch "$src.tmp/.ember-unpacked"
	mv "$src.tmp" "$src"
fi

build=$kdir/build
mkdir -p "$build"
start=$(date +%s)
log "configuring in $build"
make -s -C "$src" O="$build" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
make -s -C "$src" O="$build" olddefconfig >/dev/null

# Every requested option must have survived olddefconfig: a missing
# dependency silently drops an option, which would make a broken guest.
missing=0
while IFS= read -r line; do
	if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
		want="${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
		if ! grep -qxF -- "$want" "$build/.config"; then
			got=$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$build/.config" || echo "absent")
			log "requested $want, got: $got"
			missing=1
		fi
	elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
		if grep -qE "^${BASH_REMATCH[1]}=" "$build/.config"; then
			log "requested ${BASH_REMATCH[1]} unset, but it is set"
			missing=1
		fi
	fi
done <"$fragment"
((missing == 0)) || die "config fragment $fragment not satisfied after olddefconfig (missing dependencies?)"

log "building with -j$jobs (a few minutes)"
make -s -C "$src" O="$build" -j"$jobs" vmlinux bzImage
readelf -n "$build/vmlinux" | grep -q 'Xen' || die "vmlinux has no PVH (Xen ELF) note"

cp "$build/vmlinux" "$kdir/vmlinux.tmp" && mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$kdir/bzImage.tmp" && mv "$kdir/bzImage.tmp" "$kdir/bzImage"
cp "$build/.config" "$kdir/config.tmp" && mv "$kdir/config.tmp" "$kdir/config"
log "built in $(( $(date +%s) - start ))s: $kdir"
copy_out
