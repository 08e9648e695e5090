package e2b

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// sdkDir holds the Node test and the lockfile that pins E2B's SDK.
const sdkDir = "sdktest"

// TestSDK runs E2B's JS SDK (the `e2b` npm package, pinned in
// sdktest/package-lock.json) unchanged against the E2B listener: the
// manager with the tiny guest behind the control plane, and a real
// ember-agent in this process standing in for each sandbox's guest behind
// the envd gateway. It needs node and npm (npm ci fetches the pinned
// package once).
func TestSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (apt-get install nodejs npm): E2B's SDK test needs it")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not installed (apt-get install npm): E2B's SDK test needs it")
	}
	if _, err := os.Stat(filepath.Join(sdkDir, "node_modules", "e2b", "package.json")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = sdkDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", sdkDir, err, out)
		}
	}
	ac := startAgent(t)
	h := startHost(t, ac)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "sdk.test.mjs")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"E2B_API_URL="+h.url, "E2B_SANDBOX_URL="+h.url, "E2B_API_KEY="+h.key, "E2B_DOMAIN=127.0.0.1",
		"EMBER_TEMPLATE=tiny", "EMBER_WORKDIR="+work)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test sdk.test.mjs: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
