// Package disk holds the backing stores of Ember's virtio-blk drives (the
// split of Cloud Hypervisor's block crate): the Store interface the device
// reads and writes through, Raw (one file, what a drive always was), and
// COW, a copy-on-write drive made of a read-only base and a writable
// overlay. The overlay is an Ember extension: Firecracker's drives have no
// such thing.
//
// # Stores
//
// A request's data segments go to a store as one vector at one offset;
// Raw moves it with one preadv or pwritev, COW with one per run of
// clusters that all come from the same file. Neither allocates per
// request: the iovecs live on the stack (vec.go).
//
// # The overlay
//
// An overlay file is a 4 KiB header, an allocation map with one bit per
// cluster, and a data area laid out like the base: guest byte x is at data
// offset + x, in a sparse file whose holes are the clusters never written
// (format.go has the byte layout). A read takes each run of clusters from
// the overlay or the base according to the map, held in memory and read
// with atomic loads, so reads take no lock. A write goes to the overlay;
// a cluster it covers only in part is first copied up from the base. The
// header records the base's path and Identity (size, modification time,
// SHA-256 of 16 sampled blocks): opening an overlay on a base that differs
// fails with ErrBaseChanged, naming what changed.
//
// Why not qcow2: qcow2 maps clusters through two levels of tables to
// wherever it appended them, keeps reference counts, and needs its own
// journal-less ordering rules (and, in practice, a repair tool) to survive
// crashes. Ember's overlay has the base's offsets, so the map is one flat
// bitmap (32 KiB per GiB at 4 KiB clusters), the file system's sparse
// files do the allocating, and there is nothing to reference-count.
//
// # Crash consistency
//
// Map bits only ever go from 0 to 1, and a bit is written to the file only
// after its cluster's data, so every version of a map page, including a
// torn mix of two, describes clusters whose data is there. The overlay
// has two maps, for the two kinds of failure:
//
//   - kill -9 of Ember: every write that allocates also writes its bits
//     into the volatile map, in the page cache, after its data. The page
//     cache outlives the process, so the next open in the same boot (the
//     volatile map records the kernel's boot_id) finds every write that
//     completed, flushed or not, as with a raw file.
//   - a host crash: a FLUSH (and Close, and a snapshot) is fdatasync of
//     the data, then the durable map's pages that lack bits, then
//     fdatasync again. After a reboot only the durable map is believed:
//     everything flushed is there; later writes read as the base's data
//     again, never as garbage (zeros from a hole, or a torn cluster).
//
// A writable open that finds a killed writer's bits in the volatile map
// flushes them into the durable one at once. Where the boot ID cannot be
// read (no /proc), the volatile map is never believed, and unflushed
// writes are lost to kill -9 too.
//
// # Seccomp
//
// A store opened while the guest runs (PATCH /drives) adds
// Options.OpenFlags (seccomp.OpenAfterBoot) to each open: the overlay, the
// base, the boot ID. Serving the guest, flushing, Mark and Close use only
// preadv, pwritev, fdatasync, fstat and munmap, and stores into the
// mapped volatile map, which the running VM's filter allows. Making
// overlays and merging them (CreateOverlay, Commit) run before boot or in
// the ember disk command: they reserve a name with O_EXCL and rename onto
// it, as renameat2 is not in the filters.
//
// # Cluster size
//
// 4 KiB by default: the size of a guest page and file-system block, so a
// guest's writes nearly always cover whole clusters (no copy-up), and 10
// MiB written at random 4 KiB offsets take 10 MiB of overlay, where 64 KiB
// clusters would take up to 160 MiB and copy 60 KiB from the base per
// write. The cost of small clusters is the map: 1 bit per 4 KiB.
//
// # Snapshots and chains
//
// A base may itself be an overlay, opened read-only (FlagBaseIsOverlay in
// the header): a snapshot records its drive's overlay (COW.Mark: its
// identity and write generation, which the next write raises, so that any
// later write to it is seen), and each clone loaded from the
// snapshot gets a new empty overlay over that one in constant time
// (CreateOverlay), instead of a copy of the disk. Chains are at most
// MaxChain deep; Commit merges an overlay and its bases into a new raw
// base.
package disk
