package mmds

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"
)

// Token parameters (Firecracker's src/vmm/src/mmds/token.rs).
const (
	// MinTokenTTL and MaxTokenTTL bound a token's lifetime in seconds
	// (EC2's IMDSv2 bounds: 1 s to 6 h).
	MinTokenTTL = 1
	MaxTokenTTL = 21600
	// TokenPath is where a V2 guest PUTs to get a token.
	TokenPath = "/latest/api/token"

	keyLen   = 32 // AES-256
	ivLen    = 12 // the GCM nonce
	expLen   = 8  // the sealed expiry: milliseconds, little endian
	tagLen   = 16 // the GCM tag
	tokenLen = ivLen + expLen + tagLen
	// maxTokenChars: longer strings are refused without decoding
	// (Firecracker's TOKEN_LENGTH_LIMIT; a token is 48 base64 characters).
	maxTokenChars = 70
)

// TokenAuthority issues and checks the V2 session tokens of one VM. A token
// is base64(iv | AES-256-GCM(expiry) | tag) with the additional data
// "microvmid=<instance id>", as Firecracker's: the expiry, on a monotonic
// clock, cannot be read or forged without the key, which each authority
// draws at random. A token is valid until its expiry on this authority
// only: a restored clone has a new authority, so the source's tokens are
// void there.
type TokenAuthority struct {
	mu     sync.Mutex
	aead   cipher.AEAD
	aad    []byte
	sealed uint64 // tokens sealed under the current key
	start  time.Time
	// now is the time since start (time.Since: monotonic); tests move it.
	now func() time.Duration
}

// NewTokenAuthority returns an authority with a fresh random key for the
// VM instanceID.
func NewTokenAuthority(instanceID string) (*TokenAuthority, error) {
	a := &TokenAuthority{aad: []byte("microvmid=" + instanceID), start: time.Now()}
	a.now = func() time.Duration { return time.Since(a.start) }
	if err := a.rekey(); err != nil {
		return nil, err
	}
	return a, nil
}

// rekey draws a new key: every token issued before is void.
func (a *TokenAuthority) rekey() error {
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("mmds: token key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("mmds: token key: %w", err)
	}
	if a.aead, err = cipher.NewGCM(block); err != nil {
		return fmt.Errorf("mmds: token key: %w", err)
	}
	a.sealed = 0
	return nil
}

// InvalidTTLError is a token lifetime out of range.
type InvalidTTLError struct{ TTL uint64 }

func (e InvalidTTLError) Error() string {
	return fmt.Sprintf("Invalid time to live value provided for token: %d. Please provide a value between %d and %d.",
		e.TTL, MinTokenTTL, MaxTokenTTL)
}

// Generate issues a token valid for ttl seconds (MinTokenTTL to
// MaxTokenTTL, else an InvalidTTLError).
func (a *TokenAuthority) Generate(ttl uint64) (string, error) {
	if ttl < MinTokenTTL || ttl > MaxTokenTTL {
		return "", InvalidTTLError{ttl}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// GCM with random nonces: at most 2^32 messages per key (NIST SP
	// 800-38D 8.3); Firecracker renews its key there too.
	if a.sealed >= math.MaxUint32 {
		if err := a.rekey(); err != nil {
			return "", err
		}
	}
	var tok [tokenLen]byte
	if _, err := rand.Read(tok[:ivLen]); err != nil {
		return "", fmt.Errorf("mmds: token nonce: %w", err)
	}
	expiry := uint64((a.now() + time.Duration(ttl)*time.Second).Milliseconds())
	var plain [expLen]byte
	binary.LittleEndian.PutUint64(plain[:], expiry)
	a.aead.Seal(tok[ivLen:ivLen], tok[:ivLen], plain[:], a.aad)
	a.sealed++
	return base64.StdEncoding.EncodeToString(tok[:]), nil
}

// Valid reports whether token was issued by this authority and has not
// expired.
func (a *TokenAuthority) Valid(token string) bool {
	if len(token) > maxTokenChars {
		return false
	}
	var tok [maxTokenChars]byte // more than any string of maxTokenChars decodes to
	n, err := base64.StdEncoding.Decode(tok[:], []byte(token))
	if err != nil || n != tokenLen {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	plain, err := a.aead.Open(nil, tok[:ivLen], tok[ivLen:tokenLen], a.aad)
	if err != nil || len(plain) != expLen {
		return false
	}
	return binary.LittleEndian.Uint64(plain) > uint64(a.now().Milliseconds())
}
