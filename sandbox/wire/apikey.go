package wire

import "time"

// API keys are emberd's own credentials for its E2B-compatible API
// (package sandbox/e2b): `ember apikey create|ls|rm`.
const (
	// APIKeyPrefix starts every key, as E2B's keys start with "e2b_"
	// (the SDK does not check the form; tools that look for the prefix
	// find it).
	APIKeyPrefix = "e2b_"
	// MaxAPIKeyName bounds a key's name.
	MaxAPIKeyName = 128
)

// APIKey is a stored API key: never the key itself.
type APIKey struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// Shown is the key's first characters, to recognise it.
	Shown string `json:"shown"`
	// SHA256 is the key's SHA-256, in hex.
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"created_at"`
}

// NewAPIKey is the answer to a key's creation: the only time the key is
// seen.
type NewAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// APIKeyRequest is the body of POST /apikeys.
type APIKeyRequest struct {
	Name string `json:"name,omitempty"`
}
