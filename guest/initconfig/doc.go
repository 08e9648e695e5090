// Package initconfig is the contract between Ember on the host and
// ember-init, the PID 1 that boots an OCI image inside a microVM: one JSON
// document, [Config], that the host writes and the guest reads. It is pure
// data and validation (no Linux-only imports), so host code (the image
// runner, the API) and the guest init share one definition.
//
// # Where the config travels
//
// The host gives the guest an initrd made of two concatenated newc cpio
// archives (Linux unpacks every archive of one initrd into the same rootfs):
//
//  1. a gzip-compressed archive holding /init, the static ember-init binary,
//     built once per binary and cached by its content hash (package initrd);
//  2. an uncompressed archive of a few hundred bytes appended for each VM,
//     holding /ember/config.json ([Path]).
//
// # What the init does with it
//
// Drives are found by their virtio-blk serial (the drive ID the host gave,
// answered to VIRTIO_BLK_T_GET_ID and shown in /sys/block/vdX/serial),
// never by /dev/vdX order. Each of [Config.Layers], lowest first, is mounted
// read-only at /ember/layers/N; the [Config.Writable] drive (ext4) at
// /ember/rw holds upper/ and work/, created on its first boot and reused on
// later ones, so files a workload wrote survive re-runs and snapshot clones.
// Without a writable drive the upper layer lives in a tmpfs and is lost at
// power-off. The overlay is mounted at /ember/root with the topmost layer
// first in lowerdir, and becomes / (MS_MOVE and chroot, as switch_root does).
// In the new root: proc, sysfs, devtmpfs, devpts, /dev/shm, /run and /tmp.
//
// The init then sets the hostname, resolves [Config.User] against the
// image's /etc/passwd and /etc/group with OCI semantics, completes the
// environment (PATH, HOME, HOSTNAME, TERM when missing) and, in [ModeRun],
// runs [Config.Args] in [Config.WorkingDir] on the console. When the
// workload ends the init reports its status to the host through the
// exit-status register (devices.ExitStatus: 0-255, 128+N for a signal N,
// 125 when the init itself failed, 126 when the command cannot be run, 127
// when it is not found) and resets the machine.
//
// # Runtime-managed files
//
// /etc/hostname is written on every boot when [Config.Hostname] is set;
// /etc/hosts only when the image has none (localhost and the hostname);
// /etc/resolv.conf only when [Config.DNS] is set (replacing the image's). An
// image's own files are otherwise left alone: the image knows best.
//
// # Compatibility
//
// [Config.Version] must equal [Version]: ember and ember-init are built
// together, and a mismatch (an old $EMBER_INIT, say) fails at once with a
// message naming both versions instead of misreading a field. Unknown
// fields are errors for the same reason.
package initconfig
