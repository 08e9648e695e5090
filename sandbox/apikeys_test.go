package sandbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAPIKeys: a key is checked by its hash, the database never holds
// the key, a removed key is refused, and a stored secret outlives a
// reopen of the manager.
func TestAPIKeys(t *testing.T) {
	state := t.TempDir()
	m := openTest(t, state)
	k, err := m.CreateAPIKey("ci")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Key, APIKeyPrefix) || len(k.Key) != len(APIKeyPrefix)+2*apiKeyBytes || !strings.HasPrefix(k.Key, k.Shown) {
		t.Fatalf("key %+v", k)
	}
	if got, err := m.CheckAPIKey(k.Key); err != nil || got.ID != k.ID {
		t.Fatalf("CheckAPIKey: %+v %v", got, err)
	}
	for _, bad := range []string{"", k.Key + "0", strings.ToUpper(k.Key)} {
		if _, err := m.CheckAPIKey(bad); !errors.Is(err, ErrBadAPIKey) {
			t.Errorf("CheckAPIKey(%q): %v", bad, err)
		}
	}
	if _, err := m.CreateAPIKey("bad\nname"); KindOf(err) != KindInvalid {
		t.Errorf("a name with a newline: %v", err)
	}
	secret, err := m.Secret("test")
	if err != nil || len(secret) != secretBytes {
		t.Fatalf("Secret: %x %v", secret, err)
	}
	m.Close()
	db, err := os.ReadFile(filepath.Join(state, dbName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(k.Key)) || bytes.Contains(db, []byte(k.Key[len(APIKeyPrefix):])) {
		t.Fatal("the database holds the key itself")
	}

	m = openTest(t, state)
	defer m.Close()
	if again, err := m.Secret("test"); err != nil || !bytes.Equal(again, secret) {
		t.Fatalf("the secret after a reopen: %x %v, want %x", again, err, secret)
	}
	if _, err := m.CheckAPIKey(k.Key); err != nil {
		t.Fatalf("the key after a reopen: %v", err)
	}
	if err := m.DeleteAPIKey(k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CheckAPIKey(k.Key); !errors.Is(err, ErrBadAPIKey) {
		t.Fatalf("a removed key: %v", err)
	}
	if err := m.DeleteAPIKey(k.ID); KindOf(err) != KindNotFound {
		t.Fatalf("removing it again: %v", err)
	}
}
