package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Buckets of the database: one JSON record per key (the ID), plus a meta
// bucket for the generation counter and secrets, and the network's address
// leases (by owner: a sandbox or template ID); the API keys' bucket is in
// apikeys.go.
var (
	bucketTemplates = []byte("templates")
	bucketSandboxes = []byte("sandboxes")
	bucketMeta      = []byte("meta")
	bucketLeases    = []byte("leases")
	keyGeneration   = []byte("generation")
)

// dbOpenTimeout bounds the wait for the database's file lock: a second
// emberd on the same state folder fails instead of waiting forever.
const dbOpenTimeout = 2 * time.Second

// errNotFound is a missing record.
var errNotFound = errors.New("not found")

// store is the manager's state in bbolt.
type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: dbOpenTimeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("opening the state database %s: another emberd holds it", path)
		}
		return nil, fmt.Errorf("opening the state database %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTemplates, bucketSandboxes, bucketMeta, bucketLeases, bucketAPIKeys} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("preparing the state database %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// put stores v under id in bucket, sharing a commit with concurrent puts.
func (s *store) put(bucket []byte, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(id), data) })
}

func (s *store) get(bucket []byte, id string, v any) error {
	return s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucket).Get([]byte(id))
		if data == nil {
			return errNotFound
		}
		return json.Unmarshal(data, v)
	})
}

func (s *store) delete(bucket []byte, id string) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) })
}

// list decodes every record of bucket, in key order.
func list[T any](s *store, bucket []byte) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, data []byte) error {
			var v T
			if err := json.Unmarshal(data, &v); err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// nextGeneration returns a restore generation never handed out before.
func (s *store) nextGeneration() (uint64, error) {
	var g uint64
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyGeneration); len(v) > 0 {
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
		}
		g++
		data, _ := json.Marshal(g)
		return b.Put(keyGeneration, data)
	})
	return g, err
}
