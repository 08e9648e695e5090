package disk

import (
	"bytes"
	"testing"
)

// FuzzOverlayHeader feeds arbitrary bytes to the header and map parsers,
// seeded with real overlays. Whatever they accept describes a map within
// MaxMapLength, maps and data that do not overlap, and re-encodes to the
// same header bytes.
func FuzzOverlayHeader(f *testing.F) {
	for _, size := range []int64{1 << 20, 5*4096 + 1536, 1 << 40} {
		h := header{ClusterSize: DefaultClusterSize, VirtualSize: size, BasePath: "/var/lib/base.img",
			Base: Identity{Size: size, MtimeNs: 1e18}}
		h.layout()
		m := make([]byte, mapPage)
		m[0] = 0x6
		f.Add(append(h.encode(), m...))
	}
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		if err != nil {
			return
		}
		if h.MapLength > MaxMapLength || h.MapOffset < HeaderSize ||
			h.VolatileOffset < h.MapOffset+h.MapLength || h.DataOffset < h.volatileMap()+h.MapLength ||
			int64(h.ClusterSize)*8*h.MapLength < h.VirtualSize {
			t.Fatalf("accepted an inconsistent header %+v", h)
		}
		if !bytes.Equal(h.encode(), b[:HeaderSize]) {
			t.Fatal("the header does not re-encode to its bytes")
		}
		m := b[HeaderSize:]
		if int64(len(m)) < h.MapLength {
			return
		}
		words := make([]uint64, h.MapLength/8)
		if err := decodeMap(h, m[:h.MapLength], words); err != nil {
			return
		}
		for c := h.clusters(); c < int64(len(words))*64; c++ {
			if words[c/64]&(1<<(c%64)) != 0 {
				t.Fatalf("map accepted with bit %d set past the %d clusters", c, h.clusters())
			}
		}
	})
}
