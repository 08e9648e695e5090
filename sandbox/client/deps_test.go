package client

import (
	"testing"

	"github.com/embervm/ember/internal/depcheck"
)

// TestLinksNoManager: the client is linked into the ember binary (the VMM,
// started once per microVM), so it uses only the API's leaf packages
// (sandbox/wire, sandbox/network/egress), never emberd's manager, network
// or image store.
func TestLinksNoManager(t *testing.T) {
	depcheck.NoHeavy(t, ".")
}
