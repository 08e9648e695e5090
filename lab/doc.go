// Package lab runs commands inside the Ember lab: a QEMU TCG virtual machine
// (-accel tcg -cpu max, which emulates AMD SVM with nested paging) booting
// Debian's generic 6.1 kernel with kvm-amd loaded, so that a real /dev/kvm is
// available to Ember even on hosts whose own /dev/kvm cannot boot Linux.
//
// The lab shares the host's root filesystem read-only over 9p and chroots
// into it, so every host program and file is usable inside at its own path.
// A command is handed over as a job script in a job directory under the cache
// (visible inside through the shared root); its output is framed by unique
// markers on the serial console, filtered on the host side, and its exit
// status travels back in the end marker.
//
// Inside the lab:
//   - the host root is read-only; each --add path (RunOptions.Add) is shared
//     writable at the same path (a directory itself, a file through its
//     parent directory), mounted over the read-only root;
//   - /tmp, /run, /dev, /proc and /sys are the lab's own (fresh tmpfs,
//     devtmpfs, ...): the host's contents there are not visible. So the cache
//     (job directories) must not live there, go test -exec needs GOTMPDIR
//     elsewhere (the Makefile uses the cache), and a command whose path is
//     under them gets its directory shared automatically;
//   - GOCACHE and the module cache are read-only unless shared with --add.
//
// The package also builds the guest initramfs used by Ember's tests; both it
// and the lab's own initramfs are written by package initrd.
package lab
