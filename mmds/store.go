package mmds

import (
	"errors"
	"sync"
	"sync/atomic"
)

// DefaultSizeLimit is the data store's default limit, in bytes of its
// compact JSON: Firecracker's --mmds-size-limit default (which is its API
// payload limit's default).
const DefaultSizeLimit = 51200

// Errors of the store, with Firecracker's messages (MmdsDatastoreError).
var (
	// ErrLimitExceeded: a PUT or PATCH would take the store over its
	// limit. The API answers 413, as Firecracker does.
	ErrLimitExceeded = errors.New("The MMDS patch request doesn't fit.")
	// ErrNotInitialized: PATCH before the first PUT.
	ErrNotInitialized = errors.New("The MMDS data store is not initialized.")
	// ErrNotFound: no value at the path a GET names.
	ErrNotFound = errors.New("The MMDS resource does not exist.")
	// ErrUnsupportedValueType: the IMDS format has no form for the value
	// (a number, a boolean, null or an array).
	ErrUnsupportedValueType = errors.New("Cannot retrieve value. The value has an unsupported type.")
)

// Store is the data store of one process: one JSON value, at most a limit
// of bytes in its compact form. Writers (the API) are serialised; readers
// (the guest's requests, GET /mmds) load the current value without a lock:
// a published value never changes, a write publishes a new one.
type Store struct {
	limit int
	mu    sync.Mutex // serialises writers
	cur   atomic.Pointer[storeValue]
}

// storeValue is one published state of the store.
type storeValue struct {
	v           any
	json        []byte // v serialised (AppendJSON)
	initialized bool   // a PUT has been made
}

// NewStore returns an empty store that holds at most limit bytes of
// compact JSON (DefaultSizeLimit if limit <= 0).
func NewStore(limit int) *Store {
	if limit <= 0 {
		limit = DefaultSizeLimit
	}
	s := &Store{limit: limit}
	s.cur.Store(&storeValue{json: []byte("null")})
	return s
}

// Limit is the store's size limit in bytes.
func (s *Store) Limit() int { return s.limit }

// Put replaces the store's value with v (a value ParseJSON returned). A
// value over the limit is refused with ErrLimitExceeded and changes nothing.
func (s *Store) Put(v any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publish(v)
}

// Patch merges patch into the store's value (RFC 7396). It fails with
// ErrNotInitialized before the first Put, and with ErrLimitExceeded, changing
// nothing, if the result would be over the limit.
func (s *Store) Patch(patch any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load()
	if !cur.initialized {
		return ErrNotInitialized
	}
	return s.publish(MergePatch(cur.v, patch))
}

// publish makes v the store's value if it fits. s.mu is held.
func (s *Store) publish(v any) error {
	b := AppendJSON(nil, v)
	if len(b) > s.limit {
		return ErrLimitExceeded
	}
	s.cur.Store(&storeValue{v: v, json: b, initialized: true})
	return nil
}

// JSON returns the whole store as compact JSON, "{}" while it is empty or
// null (GET /mmds, as Firecracker answers it). The caller must not modify
// the bytes.
func (s *Store) JSON() []byte {
	cur := s.cur.Load()
	if cur.v == nil {
		return []byte("{}")
	}
	return cur.json
}

// Value returns the current value (never to be modified).
func (s *Store) Value() any { return s.cur.Load().v }
