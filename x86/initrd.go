package x86

import (
	"fmt"

	"github.com/embervm/ember/memory"
)

// DefaultInitrdAddrMax is the highest address an initrd may occupy when
// the kernel states no initrd_addr_max: the 4 GiB limit of the 32-bit
// ramdisk_image field (boot.rst; ext_ramdisk_image is not needed below it).
const DefaultInitrdAddrMax = 1<<32 - 1

// InitrdAddr returns where to load an initrd of size bytes: the highest
// page-aligned address at which it ends at or below both the end of low
// memory and maxAddr+1 (maxAddr is the last byte it may occupy: a bzImage's
// initrd_addr_max, or 0 for DefaultInitrdAddrMax), and starts at or above
// both kernelEnd and HighMemStart (below 1 MiB are the boot structures).
func InitrdAddr(mem *memory.Guest, size, kernelEnd, maxAddr uint64) (uint64, error) {
	if size == 0 {
		return 0, fmt.Errorf("initrd is empty")
	}
	kernelEnd = max(kernelEnd, HighMemStart)
	if maxAddr == 0 {
		maxAddr = DefaultInitrdAddrMax
	}
	top := mem.LowEnd()
	if maxAddr < top {
		top = maxAddr + 1 // maxAddr < LowEnd, so this cannot overflow
	}
	if size > top || (top-size)&^(memory.PageSize-1) < kernelEnd {
		return 0, fmt.Errorf("initrd of %s does not fit in guest memory of %s (room between kernel end %#x and %#x is %s)",
			mib(size), mib(mem.Size()), kernelEnd, top, mib(top-min(top, kernelEnd)))
	}
	return (top - size) &^ (memory.PageSize - 1), nil
}

// mib formats a byte count in MiB, with one decimal when it is not whole.
func mib(n uint64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
