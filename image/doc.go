// Package image is Ember's OCI image store: it imports images (an OCI
// image layout folder, a `docker save` tarball, or a pull from a
// registry), keeps them content-addressed under Ember's home folder, and
// turns every layer into one read-only EROFS filesystem image, made once
// and shared by every image and every VM that has that layer. A VM gets
// its image's layers as read-only virtio-blk drives plus one writable
// drive, and the guest's init stacks them with overlayfs.
//
// # On disk
//
// Under HOME/images (HOME is $EMBER_HOME, default /var/lib/ember):
//
//	blobs/sha256/HEX          manifests, configs and layer blobs as fetched (by digest)
//	layers/sha256/HEX.erofs   one filesystem image per layer (by diff ID)
//	merged/sha256/HEX.erofs   flattened lowest layers (by a key over their diff IDs)
//	index/sha256/HEX.json     one record per image (by config digest, the image ID)
//	refs.json                 names ("index.docker.io/library/busybox:latest") → image IDs
//	tmp/, locks/              work in progress, per-layer build locks
//	lock, refs.lock           flock(2) locks
//
// Two images that share a layer share its blob and its filesystem image;
// the host page cache of that image is then shared by every VM reading it.
//
// # Concurrency and crashes
//
// Everything is written to a temporary name in tmp/, fsynced and renamed
// into place (then the directory is fsynced). An import holds the store
// lock shared, so imports run side by side; a per-diff-ID lock keeps two
// of them from building the same layer twice. The image record, then its
// names, are written last: that is the commit point. A process killed
// before it leaves only unreferenced, content-addressed files, never a
// visible half-image. Remove and Prune hold the store lock exclusively,
// so they wait for imports in progress and never delete what an import is
// about to reference; they delete every blob, layer image and merged image
// no remaining record references, and everything in tmp/. A failed import
// cleans up after itself the same way when no other import is running.
// flock locks die with their process, so a crash never leaves the store
// locked.
//
// # Import, pull, verification
//
// go-containerregistry (github.com/google/go-containerregistry) reads OCI
// layouts (pkg/v1/layout) and registries (pkg/v1/remote, with credentials
// from the Docker config as docker and crane find them, and the
// linux/GOARCH image of a multi-platform index): it is the Go library
// that crane, ko and kaniko use, and handles the registry protocol, auth
// challenges and the media-type zoo. A docker save tarball is indexed in
// one pass (its manifest.json format from pkg/v1/tarball) and read in
// place; its layers are stored as they are (uncompressed, digest = diff
// ID) under a manifest made for them. Every byte is verified whatever the
// source: manifest and config digests, each blob's size and digest, and
// each layer's diff ID, all before anything is renamed into place. Layers
// may be gzip, zstd or uncompressed (sniffed from their first bytes).
// Images must be linux/GOARCH with sha256 digests.
//
// # Tar to layer filesystem
//
// A layer tar is unpacked into a staging directory as root (unpackLayer):
// entry names are cleaned and may not climb above the root with "..";
// every parent directory is opened with openat2(RESOLVE_BENEATH|
// RESOLVE_NO_SYMLINKS), so no symbolic link of the layer, absolute or
// relative, is ever followed, and an entry whose path goes through one is
// an error; hard links may only name files this layer already has. Owners,
// modes (setuid, setgid, sticky), device nodes, fifos, nanosecond times
// and extended attributes (user.*, security.* such as file capabilities,
// trusted.*, POSIX ACLs) are kept; chown comes before chmod and setxattr,
// which it would undo. OCI whiteouts become overlayfs' own markers: ".wh.NAME"
// → NAME as a 0:0 character device, ".wh..wh..opq" → the xattr
// trusted.overlay.opaque=y on the directory. A layer may not set
// trusted.overlay.* itself (redirects, metacopy). FuzzUnpackLayer checks
// that no input writes outside the staging directory.
//
// # Why EROFS
//
// mkfs.erofs (Debian's erofs-utils 1.5) turns the staging directory into
// an EROFS image: a read-only filesystem made for exactly this (Android
// system images, container layers in composefs and Nydus). Mounted with
// `mount -t erofs -o loop` on this host, it carries everything overlayfs
// needs: 0:0 character devices, trusted.overlay.opaque, security.capability,
// setuid bits, hard links, nanosecond mtimes (TestImportLayoutAndRun
// mounts two layers under overlayfs and checks each). Sizes measured on
// 2026-12-06 (ext4 built with mkfs.ext4 -d, no journal, no reserved
// blocks, then shrunk with resize2fs -M):
//
//	layer                              tar        EROFS      EROFS lz4hc  ext4
//	busybox 1.35 (1 binary, 269 links)  2.41 MB   1.99 MB    1.41 MB      3.26 MB
//	Debian 12 essential + bash          139.8 MB  135.9 MB   75.9 MB      172.2 MB
//
// EROFS is the smallest uncompressed format (files are packed with their
// tails inline; ext4 is 1.3–1.6x larger, needs its size guessed and then
// shrunk, and is a writable format mounted read-only). Layers are stored
// uncompressed: mkfs.erofs took 0.7 s for the Debian layer against 10.4 s
// with lz4hc, the guest reads blocks without decompressing them, the host
// page cache holds exactly the bytes the guests read, and the guest kernel
// needs only CONFIG_EROFS_FS. lz4hc would save about 45% of disk; it is a
// flag in buildErofs if disk matters more than import time later.
//
// # More layers than drives
//
// The VMM has a fixed number of virtio-mmio slots, so LayerImages takes the
// maximum number of read-only drives. When an image has more layers, its
// lowest layers are flattened into one merged EROFS image (each layer's
// whiteouts applied as deletions, then its files added, from the stored
// blobs), kept under merged/ by a key over their diff IDs and shared by
// every image with the same lowest layers. Nothing lies below the lowest
// layer, so the merged image needs no whiteouts of its own; the layers
// above it keep theirs. TestLayerImagesFlatten checks that the overlay of
// 2 or 3 drives shows the same tree as the overlay of all 4 layers.
//
// # What the guest side needs
//
// Drives. LayerImages(ctx, img, maxReadOnly) returns the layer images,
// lowest first. Attach them as read-only virtio-blk drives in that order,
// then one writable drive. Suggested drive IDs, which the guest reads back
// as /sys/block/vdX/serial (Ember answers GET_ID with the drive ID), so it
// need not trust probe order: "ember-layer-0" (lowest) … "ember-layer-N-1",
// and "ember-upper".
//
// Format. Each layer drive is an EROFS filesystem (4 KiB blocks,
// uncompressed, with xattrs); the guest kernel needs CONFIG_EROFS_FS=y and
// CONFIG_OVERLAY_FS=y (the microvm config has neither yet). Whiteouts are
// already overlayfs-native, so the guest mounts, as root:
//
//	mount -t erofs -o ro /dev/vd<layer i> /layers/i           (each i)
//	mount /dev/vd<upper> /rw; mkdir -p /rw/upper /rw/work      (the writable drive's filesystem)
//	mount -t overlay overlay -o lowerdir=/layers/N-1:…:/layers/0,upperdir=/rw/upper,workdir=/rw/work /newroot
//
// Note that lowerdir lists the top layer first.
//
// Config. Image.Config (JSON: env, working_dir, user, entrypoint, cmd,
// as `ember image inspect` prints it under "config") is what starts the
// program: argv is entrypoint followed by cmd (arguments given at run
// time replace cmd); env is "NAME=value" entries (Docker adds
// PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin when
// the image sets none); working_dir defaults to "/" and is created if
// missing; user is "name", "uid", "name:group" or "uid:gid", resolved in
// the image's /etc/passwd and /etc/group inside /newroot, "" meaning root.
// The package does not decide how the JSON reaches the guest; one way
// that costs no device slot is a small cpio archive holding it (say
// /ember/config.json) appended to the init's initramfs, which Linux
// unpacks after the first.
//
// # Not here
//
// The guest init, the VM drive wiring and the writable drive's creation
// are the guest and sandbox sides'. A VM that is running when its image is
// removed keeps its open layer files (unlinked files live while open); a
// sandbox that wants rm to refuse images in use must track that itself.
// Decompression bombs and sparse entries are not bounded: like Docker and
// containerd, the store trusts the disk space it is given.
package image
