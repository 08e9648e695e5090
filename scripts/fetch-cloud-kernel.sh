#!/usr/bin/env bash
# Fetches Debian's cloud kernel (the versioned package that
# linux-image-cloud-amd64 depends on) into the cache and copies its bzImage
# to OUTDIR/cloud-bzImage; OUTDIR/cloud-modules links to its modules.
#
# Usage: fetch-cloud-kernel.sh OUTDIR
#
# Cache layout (EMBER_CACHE, default /var/cache/ember):
#   debs/<pkg>_<version>_amd64.deb      the downloaded package
#   cloud/<pkg>_<version>/              the unpacked package (boot/, lib/modules/ with modules.dep)
set -euo pipefail

readonly META=linux-image-cloud-amd64

outdir=${1:?usage: $0 OUTDIR}
cache=${EMBER_CACHE:-/var/cache/ember}

log() { printf 'fetch-cloud-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

depends=$(apt-cache show --no-all-versions "$META" | sed -n 's/^Depends: //p') ||
	die "apt-cache show $META failed (run make setup)"
re='(linux-image-[0-9][^ ,|()]*) *[(]= *([^) ]+)[)]'
if [[ ! $depends =~ $re ]]; then
	die "no versioned kernel in $META's Depends: $depends"
fi
pkg=${BASH_REMATCH[1]}
ver=${BASH_REMATCH[2]}
key=${pkg}_${ver//:/%3a}
deb=$cache/debs/${key}_amd64.deb
unpacked=$cache/cloud/$key

if [[ ! -f $unpacked/.ember-unpacked ]]; then
	if [[ ! -f $deb ]]; then
		log "downloading $pkg=$ver"
		mkdir -p "$cache/debs"
		tmp=$(mktemp -d "$cache/debs/.download-XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver")
		mv "$tmp"/*.deb "$deb"
	fi
	log "unpacking $deb"
	rm -rf "$unpacked" "$unpacked.tmp"
	mkdir -p "$unpacked.tmp"
	dpkg-deb -x "$deb" "$unpacked.tmp"
	touch "$unpacked.tmp/.ember-unpacked"
	mv "$unpacked.tmp" "$unpacked"
fi

vmlinuz=$(find "$unpacked/boot" -name 'vmlinuz-*' | head -n1)
[[ -n $vmlinuz ]] || die "no vmlinuz in $unpacked/boot"
kver=${vmlinuz##*/vmlinuz-}
# The package ships no modules.dep (its postinst makes it); guest
# initramfs builds resolve module dependencies from it.
if [[ ! -f $unpacked/lib/modules/$kver/modules.dep ]]; then
	log "depmod $kver"
	depmod -b "$unpacked" "$kver"
fi
mkdir -p "$outdir"
cmp -s "$vmlinuz" "$outdir/cloud-bzImage" || cp "$vmlinuz" "$outdir/cloud-bzImage"
ln -sfn "$unpacked/lib/modules/$kver" "$outdir/cloud-modules"
log "cloud kernel $kver ($pkg=$ver) in $outdir"
