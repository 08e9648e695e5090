package sandbox

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// API keys are emberd's own credentials for its E2B-compatible API
// (package sandbox/e2b): `ember apikey create|ls|rm`. Only a key's
// SHA-256 is stored; the key itself is shown once, when it is made.
const (
	// apiKeyBytes is a key's randomness: 20 bytes, 40 hex digits, as
	// E2B's keys have.
	apiKeyBytes = 20
	// apiKeyShown is how much of a key `ember apikey ls` shows (its
	// prefix and the first hex digits), enough to tell keys apart.
	apiKeyShown = len(APIKeyPrefix) + 6
	// secretBytes is the size of a secret made by Manager.Secret.
	secretBytes = 32
)

var bucketAPIKeys = []byte("apikeys")

// ErrBadAPIKey is a key that emberd does not know.
var ErrBadAPIKey = errors.New("unknown API key")

func hashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// CreateAPIKey makes a new API key named name.
func (m *Manager) CreateAPIKey(name string) (NewAPIKey, error) {
	if len(name) > MaxAPIKeyName || strings.ContainsAny(name, "\x00\n\r\t") {
		return NewAPIKey{}, invalid("name", "%.20q...: want at most %d characters, no control characters", name, MaxAPIKeyName)
	}
	b := make([]byte, apiKeyBytes)
	if _, err := rand.Read(b); err != nil {
		return NewAPIKey{}, fmt.Errorf("drawing an API key: %w", err)
	}
	key := APIKeyPrefix + hex.EncodeToString(b)
	k := APIKey{ID: newID("key-"), Name: name, Shown: key[:apiKeyShown], SHA256: hashKey(key), CreatedAt: time.Now().UTC()}
	if err := m.db.put(bucketAPIKeys, k.ID, k); err != nil {
		return NewAPIKey{}, fmt.Errorf("storing the API key: %w", err)
	}
	return NewAPIKey{APIKey: k, Key: key}, nil
}

// APIKeys lists the API keys (their hashes, not the keys).
func (m *Manager) APIKeys() ([]APIKey, error) { return list[APIKey](m.db, bucketAPIKeys) }

// DeleteAPIKey removes an API key: requests with it are refused from
// then on.
func (m *Manager) DeleteAPIKey(id string) error {
	var k APIKey
	if err := m.db.get(bucketAPIKeys, id, &k); err != nil {
		if errors.Is(err, errNotFound) {
			return notFound("API key %q: no such key", id)
		}
		return err
	}
	return m.db.delete(bucketAPIKeys, id)
}

// CheckAPIKey returns the stored key whose hash is key's, or
// ErrBadAPIKey.
func (m *Manager) CheckAPIKey(key string) (APIKey, error) {
	if key == "" {
		return APIKey{}, ErrBadAPIKey
	}
	want := []byte(hashKey(key))
	keys, err := m.APIKeys()
	if err != nil {
		return APIKey{}, err
	}
	for _, k := range keys {
		if subtle.ConstantTimeCompare([]byte(k.SHA256), want) == 1 {
			return k, nil
		}
	}
	return APIKey{}, ErrBadAPIKey
}

// Secret returns the random secret named name, made (32 bytes from
// crypto/rand) and stored on first use: it survives restarts of emberd.
// The E2B layer derives each sandbox's envd access token from one.
func (m *Manager) Secret(name string) ([]byte, error) {
	key := []byte("secret/" + name)
	var secret []byte
	err := m.db.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(key); len(v) == secretBytes {
			secret = append([]byte(nil), v...)
			return nil
		}
		secret = make([]byte, secretBytes)
		if _, err := rand.Read(secret); err != nil {
			return err
		}
		return b.Put(key, secret)
	})
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return secret, nil
}
