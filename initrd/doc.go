// Package initrd builds Linux initial ramdisks: newc cpio archives
// (Documentation/driver-api/early-userspace/buffer-format.rst), written with
// u-root's cpio package (already Ember's, and the reference Go newc
// implementation) so that every archive Ember makes, the lab's included,
// comes from one writer.
//
// Archives are reproducible: entries sorted, parents implied, timestamps,
// owners and inode numbers fixed.
//
// For image VMs (package guest/initconfig describes the contract) the
// initrd is two archives in one file, which Linux unpacks one after the
// other into the same rootfs:
//
//   - [BuildInitramfs]: an uncompressed archive holding /init, the static
//     ember-init binary, built once per binary and kept in a cache
//     directory under the hash of its content (uncompressed: a guest's
//     kernel would inflate it at every boot, at the guest's pace);
//   - [AppendConfig]: that archive copied for one VM, zero-padded to a
//     4-byte boundary (the kernel looks for the next cpio header only at
//     such an offset), then an uncompressed archive holding
//     /ember/config.json.
//
// [FindInit] says where ember-init is: $EMBER_INIT, or ember-init beside
// the running executable (make build puts both in bin/).
package initrd
