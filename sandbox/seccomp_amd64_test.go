//go:build amd64

package sandbox

import (
	"testing"

	"github.com/embervm/ember/seccomp"
)

// TestSeccompExitCode: the status emberd reads as a seccomp kill is
// ember's (the platform does not import the VMM side outside tests).
func TestSeccompExitCode(t *testing.T) {
	if seccompExitCode != seccomp.ExitCode {
		t.Errorf("seccompExitCode %d, seccomp.ExitCode %d", seccompExitCode, seccomp.ExitCode)
	}
}
