// Package ipam hands out fixed-size address blocks (for example one /30 per
// sandbox) from a configured IPv4 CIDR, each block leased to one owner (a
// sandbox ID), and keeps the leases in a Store so that a restarted daemon
// never hands out a block that a surviving sandbox still uses.
//
// The allocator is next-fit: it continues after the block it handed out last
// instead of taking the lowest free one, so a block just released is the last
// to be reused (stale ARP and conntrack entries for it have time to expire).
//
// Store is the persistence interface; emberd backs it with its bbolt
// database. MemStore keeps leases in memory (tests, or a daemon that sweeps
// everything on start-up) and FileStore in one JSON file.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
)

// Lease is one block leased to one owner.
type Lease struct {
	Owner  string       `json:"owner"`
	Prefix netip.Prefix `json:"prefix"`
}

// Store persists leases. Put and Delete are called with the allocator's lock
// held, before the allocation or release is visible to anyone: if they fail,
// nothing changed.
type Store interface {
	// Load returns every persisted lease.
	Load() ([]Lease, error)
	// Put records a lease (a new one, or a new block for the same owner).
	Put(Lease) error
	// Delete removes the owner's lease; deleting a missing one is not an error.
	Delete(owner string) error
}

// ErrExhausted is returned when every block of the range is leased.
var ErrExhausted = errors.New("ipam: address range exhausted")

// Allocator leases blocks of one size from one IPv4 range. It is safe for
// concurrent use.
type Allocator struct {
	mu      sync.Mutex
	base    netip.Addr // first address of the range
	bits    int        // prefix length of each block
	nblocks int
	store   Store
	used    map[int]string // block index -> owner
	owners  map[string]int // owner -> block index
	next    int            // where the next search starts
}

// New makes an allocator of /bits blocks over cidr and recovers the leases in
// store: each must be a block of cidr of that size, and no block or owner may
// appear twice.
func New(cidr netip.Prefix, bits int, store Store) (*Allocator, error) {
	if !cidr.IsValid() || !cidr.Addr().Is4() {
		return nil, fmt.Errorf("ipam: range %v: need an IPv4 CIDR", cidr)
	}
	if cidr.Masked() != cidr {
		return nil, fmt.Errorf("ipam: range %v: host bits set (did you mean %v?)", cidr, cidr.Masked())
	}
	if bits < cidr.Bits() || bits > 32 {
		return nil, fmt.Errorf("ipam: block size /%d does not fit in range %v", bits, cidr)
	}
	if store == nil {
		return nil, errors.New("ipam: no store")
	}
	a := &Allocator{
		base:    cidr.Addr(),
		bits:    bits,
		nblocks: 1 << (bits - cidr.Bits()),
		store:   store,
		used:    make(map[int]string),
		owners:  make(map[string]int),
	}
	if err := a.recover(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Allocator) recover() error {
	leases, err := a.store.Load()
	if err != nil {
		return fmt.Errorf("ipam: load leases: %w", err)
	}
	for _, l := range leases {
		i, ok := a.Index(l.Prefix)
		if !ok {
			return fmt.Errorf("ipam: persisted lease %v of %q is not a /%d block of %v", l.Prefix, l.Owner, a.bits, a.Range())
		}
		if l.Owner == "" {
			return fmt.Errorf("ipam: persisted lease %v has no owner", l.Prefix)
		}
		if o, dup := a.used[i]; dup {
			return fmt.Errorf("ipam: persisted lease %v is held by both %q and %q", l.Prefix, o, l.Owner)
		}
		if _, dup := a.owners[l.Owner]; dup {
			return fmt.Errorf("ipam: owner %q holds two persisted leases", l.Owner)
		}
		a.used[i] = l.Owner
		a.owners[l.Owner] = i
		if i >= a.next {
			a.next = (i + 1) % a.nblocks
		}
	}
	return nil
}

// Range is the allocator's CIDR.
func (a *Allocator) Range() netip.Prefix {
	return netip.PrefixFrom(a.base, a.bits-log2(a.nblocks))
}

// Size is the number of blocks in the range.
func (a *Allocator) Size() int { return a.nblocks }

// Block returns the i-th block of the range.
func (a *Allocator) Block(i int) netip.Prefix {
	return netip.PrefixFrom(addrAdd(a.base, uint32(i)<<(32-a.bits)), a.bits)
}

// Index returns the position of block p in the range, and whether p is a
// block of this range and size.
func (a *Allocator) Index(p netip.Prefix) (int, bool) {
	if !p.IsValid() || p.Bits() != a.bits || p.Masked() != p || !a.Range().Contains(p.Addr()) {
		return 0, false
	}
	return int((u32(p.Addr()) - u32(a.base)) >> (32 - a.bits)), true
}

// Allocate leases a free block to owner, or returns the block owner already
// holds.
func (a *Allocator) Allocate(owner string) (netip.Prefix, error) {
	if owner == "" {
		return netip.Prefix{}, errors.New("ipam: allocate: empty owner")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.owners[owner]; ok {
		return a.Block(i), nil
	}
	for n := 0; n < a.nblocks; n++ {
		i := (a.next + n) % a.nblocks
		if _, taken := a.used[i]; taken {
			continue
		}
		p := a.Block(i)
		if err := a.store.Put(Lease{Owner: owner, Prefix: p}); err != nil {
			return netip.Prefix{}, fmt.Errorf("ipam: persist lease %v for %q: %w", p, owner, err)
		}
		a.used[i] = owner
		a.owners[owner] = i
		a.next = (i + 1) % a.nblocks
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d blocks of %v are leased", ErrExhausted, a.nblocks, a.Range())
}

// Release ends owner's lease. Releasing an owner without a lease is not an
// error.
func (a *Allocator) Release(owner string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.owners[owner]
	if !ok {
		return nil
	}
	if err := a.store.Delete(owner); err != nil {
		return fmt.Errorf("ipam: delete lease of %q: %w", owner, err)
	}
	delete(a.owners, owner)
	delete(a.used, i)
	return nil
}

// Lookup returns owner's block.
func (a *Allocator) Lookup(owner string) (netip.Prefix, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.owners[owner]
	if !ok {
		return netip.Prefix{}, false
	}
	return a.Block(i), true
}

// Leases returns every lease, ordered by address.
func (a *Allocator) Leases() []Lease {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Lease, 0, len(a.used))
	for i, o := range a.used {
		out = append(out, Lease{Owner: o, Prefix: a.Block(i)})
	}
	sort.Slice(out, func(x, y int) bool { return out[x].Prefix.Addr().Less(out[y].Prefix.Addr()) })
	return out
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	v := u32(a) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func log2(n int) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}
