package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// MemStore keeps leases in memory. The zero value is ready to use.
type MemStore struct {
	mu     sync.Mutex
	leases map[string]Lease
}

// Load implements Store.
func (s *MemStore) Load() ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Owner < out[j].Owner })
	return out, nil
}

// Put implements Store.
func (s *MemStore) Put(l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases == nil {
		s.leases = make(map[string]Lease)
	}
	s.leases[l.Owner] = l
	return nil
}

// Delete implements Store.
func (s *MemStore) Delete(owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.leases, owner)
	return nil
}

// FileStore keeps leases in one JSON file (a list of leases), rewritten
// whole and renamed into place on every change, so a crash leaves either the
// old or the new list. Fine for hundreds of leases; emberd uses bbolt.
type FileStore struct {
	path string
	mu   sync.Mutex
}

// NewFileStore returns a store in the file at path; a missing file is an
// empty store.
func NewFileStore(path string) *FileStore { return &FileStore{path: path} }

// Load implements Store.
func (s *FileStore) Load() ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		return nil, err
	}
	out := make([]Lease, 0, len(m))
	for _, l := range m {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Owner < out[j].Owner })
	return out, nil
}

// Put implements Store.
func (s *FileStore) Put(l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		return err
	}
	m[l.Owner] = l
	return s.write(m)
}

// Delete implements Store.
func (s *FileStore) Delete(owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		return err
	}
	if _, ok := m[owner]; !ok {
		return nil
	}
	delete(m, owner)
	return s.write(m)
}

func (s *FileStore) read() (map[string]Lease, error) {
	m := make(map[string]Lease)
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam store: %w", err)
	}
	var list []Lease
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("ipam store %s: %w", s.path, err)
	}
	for _, l := range list {
		if _, dup := m[l.Owner]; dup {
			return nil, fmt.Errorf("ipam store %s: owner %q listed twice", s.path, l.Owner)
		}
		m[l.Owner] = l
	}
	return m, nil
}

func (s *FileStore) write(m map[string]Lease) error {
	list := make([]Lease, 0, len(m))
	for _, l := range m {
		list = append(list, l)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Owner < list[j].Owner })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), filepath.Base(s.path)+".tmp*")
	if err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("ipam store: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("ipam store: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	return nil
}

// Path is the store's file.
func (s *FileStore) Path() string { return s.path }
