package vsock

import (
	"encoding/binary"
	"errors"

	"github.com/embervm/ember/virtio"
)

// Packet layout and codes (virtio 5.10.6).
const (
	// hdrSize is sizeof(struct virtio_vsock_hdr).
	hdrSize = 44

	typeStream = 1 // VIRTIO_VSOCK_TYPE_STREAM, the only type Ember offers

	opRequest       = 1 // VIRTIO_VSOCK_OP_REQUEST
	opResponse      = 2 // VIRTIO_VSOCK_OP_RESPONSE
	opRST           = 3 // VIRTIO_VSOCK_OP_RST
	opShutdown      = 4 // VIRTIO_VSOCK_OP_SHUTDOWN
	opRW            = 5 // VIRTIO_VSOCK_OP_RW
	opCreditUpdate  = 6 // VIRTIO_VSOCK_OP_CREDIT_UPDATE
	opCreditRequest = 7 // VIRTIO_VSOCK_OP_CREDIT_REQUEST

	shutRcv  = 1 // VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE: the sender will receive no more
	shutSend = 2 // VIRTIO_VSOCK_SHUTDOWN_F_SEND: the sender will send no more

	// MaxPacket bounds the payload of one packet either way. Linux sends
	// at most 64 KiB (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer len is a
	// malformed packet.
	MaxPacket = 64 << 10
)

// header is struct virtio_vsock_hdr, all fields little-endian.
type header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

// decode reads the header from b (at least hdrSize bytes).
func (h *header) decode(b []byte) {
	_ = b[hdrSize-1]
	h.SrcCID = binary.LittleEndian.Uint64(b[0:])
	h.DstCID = binary.LittleEndian.Uint64(b[8:])
	h.SrcPort = binary.LittleEndian.Uint32(b[16:])
	h.DstPort = binary.LittleEndian.Uint32(b[20:])
	h.Len = binary.LittleEndian.Uint32(b[24:])
	h.Type = binary.LittleEndian.Uint16(b[28:])
	h.Op = binary.LittleEndian.Uint16(b[30:])
	h.Flags = binary.LittleEndian.Uint32(b[32:])
	h.BufAlloc = binary.LittleEndian.Uint32(b[36:])
	h.FwdCnt = binary.LittleEndian.Uint32(b[40:])
}

// encode writes the header into b (at least hdrSize bytes).
func (h *header) encode(b []byte) {
	_ = b[hdrSize-1]
	binary.LittleEndian.PutUint64(b[0:], h.SrcCID)
	binary.LittleEndian.PutUint64(b[8:], h.DstCID)
	binary.LittleEndian.PutUint32(b[16:], h.SrcPort)
	binary.LittleEndian.PutUint32(b[20:], h.DstPort)
	binary.LittleEndian.PutUint32(b[24:], h.Len)
	binary.LittleEndian.PutUint16(b[28:], h.Type)
	binary.LittleEndian.PutUint16(b[30:], h.Op)
	binary.LittleEndian.PutUint32(b[32:], h.Flags)
	binary.LittleEndian.PutUint32(b[36:], h.BufAlloc)
	binary.LittleEndian.PutUint32(b[40:], h.FwdCnt)
}

// Reasons a tx packet is refused. They are fixed values so that a refused
// packet costs no allocation. The first three leave the header untrusted
// (the packet is dropped); after the others the header's addresses are
// sound and the device answers RST.
var (
	errShortHeader   = errors.New("vsock: chain shorter than a packet header")
	errSrcCID        = errors.New("vsock: src_cid is not the guest's CID")
	errDstCID        = errors.New("vsock: dst_cid is not the host's CID")
	errWritableTx    = errors.New("vsock: device-writable buffer in a tx chain")
	errType          = errors.New("vsock: packet type is not STREAM")
	errOp            = errors.New("vsock: unknown op")
	errLenMax        = errors.New("vsock: len exceeds the maximum packet size")
	errLenChain      = errors.New("vsock: len exceeds the bytes in the chain")
	errControlLen    = errors.New("vsock: control packet carries a payload")
	errShutdownFlags = errors.New("vsock: unknown SHUTDOWN flags")
	errShortRx       = errors.New("vsock: rx chain shorter than a packet header")
	errReadableRx    = errors.New("vsock: device-readable buffer in an rx chain")
)

// answerable reports whether a packet refused with err still has a header
// worth answering with RST: it came from the guest's CID to the host's.
func answerable(err error) bool {
	return err != errShortHeader && err != errSrcCID && err != errDstCID
}

// parseTx checks a tx chain from the guest and decodes its header into h.
// The header may lie in the first descriptor or span several; scratch
// gathers it in the latter case. Every field the guest controls is checked
// (virtio 5.10.6): the addresses, the type, the op, the payload length
// against MaxPacket and against the bytes the chain actually holds, and the
// SHUTDOWN flags. buf_alloc and fwd_cnt are free-running counters: any
// value is valid, and the credit arithmetic tolerates nonsense.
func parseTx(c *virtio.Chain, guestCID uint64, h *header, scratch *[hdrSize]byte) error {
	*h = header{}
	total := 0
	writable := false
	for i := range c.Descs {
		total += len(c.Descs[i].Buf)
		writable = writable || c.Descs[i].Write
	}
	if total < hdrSize {
		return errShortHeader
	}
	b := scratch[:]
	if len(c.Descs[0].Buf) >= hdrSize {
		b = c.Descs[0].Buf
	} else {
		gather(c, 0, b)
	}
	h.decode(b)
	switch {
	case h.SrcCID != guestCID:
		return errSrcCID
	case h.DstCID != HostCID:
		return errDstCID
	case writable:
		return errWritableTx
	case h.Type != typeStream:
		return errType
	case h.Op < opRequest || h.Op > opCreditRequest:
		return errOp
	case h.Len > MaxPacket:
		return errLenMax
	case uint64(h.Len) > uint64(total-hdrSize):
		return errLenChain
	case h.Op != opRW && h.Len != 0:
		return errControlLen
	case h.Op == opShutdown && h.Flags&^(shutRcv|shutSend) != 0:
		return errShutdownFlags
	}
	return nil
}

// rxRoom checks an rx chain (all device-writable, room for a header) and
// returns its size in bytes.
func rxRoom(c *virtio.Chain) (int, error) {
	total, err := writableLen(c)
	if err == nil && total < hdrSize {
		err = errShortRx
	}
	return total, err
}

// writableLen is the size of a chain that must be all device-writable.
func writableLen(c *virtio.Chain) (int, error) {
	total := 0
	for i := range c.Descs {
		if !c.Descs[i].Write {
			return 0, errReadableRx
		}
		total += len(c.Descs[i].Buf)
	}
	return total, nil
}

// gather copies the chain's bytes from flat offset off into dst and
// returns how many it copied.
func gather(c *virtio.Chain, off int, dst []byte) int {
	n := 0
	for i := range c.Descs {
		if n == len(dst) {
			break
		}
		b := c.Descs[i].Buf
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// scatter copies src into the chain's bytes from flat offset off and
// returns how many it copied.
func scatter(c *virtio.Chain, off int, src []byte) int {
	n := 0
	for i := range c.Descs {
		if n == len(src) {
			break
		}
		b := c.Descs[i].Buf
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(b[off:], src[n:])
		off = 0
	}
	return n
}

// cursor walks the chain's bytes in [off, off+n) piece by piece, one
// descriptor at a time, without allocating.
type cursor struct {
	c      *virtio.Chain
	i      int // next descriptor
	off, n int // offset into the rest of the chain, bytes left
}

func newCursor(c *virtio.Chain, off, n int) cursor { return cursor{c: c, off: off, n: n} }

// next returns the next piece, or nil when the range is done.
func (k *cursor) next() []byte {
	for k.n > 0 && k.i < len(k.c.Descs) {
		b := k.c.Descs[k.i].Buf
		k.i++
		if k.off >= len(b) {
			k.off -= len(b)
			continue
		}
		b = b[k.off:]
		k.off = 0
		if len(b) > k.n {
			b = b[:k.n]
		}
		k.n -= len(b)
		if len(b) > 0 {
			return b
		}
	}
	return nil
}
