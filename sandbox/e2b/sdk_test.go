package e2b

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/embervm/ember/sandbox"
)

// sdkMaxSandboxes is how many sandboxes of one vCPU admission lets run.
const sdkMaxSandboxes = 2

// sdkDir holds the Node test and the lockfile that pins E2B's SDK.
const sdkDir = "sdktest"

// TestSDK runs E2B's JS SDK (the `e2b` npm package, pinned in
// sdktest/package-lock.json) unchanged against the E2B listener: the
// manager with the tiny guest behind the control plane, and a real
// ember-agent in this process standing in for each sandbox's guest behind
// the envd gateway. It needs node and npm (npm ci fetches the pinned
// package once).
func TestSDK(t *testing.T) {
	out, _ := runSDK(t, false, "")
	t.Logf("%s", out)
}

// TestSDKOverTLS: the same SDK over TLS, as emberd serves it with
// --e2b-tls-cert, trusting the listener's certificate through
// NODE_EXTRA_CA_CERTS: the SDK then speaks HTTP/2 (ALPN), unary calls
// and server streams alike. (The user-port and admission tests are left
// to TestSDK: getHost's names are not in the test certificate.)
func TestSDKOverTLS(t *testing.T) {
	out, h := runSDK(t, true, "lifecycle|wrong API key|commands and files")
	t.Logf("%s", out)
	if n := h.protos.get("HTTP/2.0"); n == 0 {
		t.Errorf("no request came over HTTP/2 (HTTP/1.1: %d)", h.protos.get("HTTP/1.1"))
	}
}

// runSDK runs sdk.test.mjs (the tests whose names match pattern, or all)
// against a new host and fails t if one fails.
func runSDK(t *testing.T, tls bool, pattern string) (string, *hostEnv) {
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
	// Two sandboxes at once at most (the tests never need more), so that
	// the third create meets admission's 429.
	h := startHost(t, ac, hostOptions{adm: sandbox.AdmissionConfig{VCPUs: sdkMaxSandboxes}, tls: tls})
	// A free port on this host for the test's HTTP server: the stand-in
	// agent's "sandbox" is this host.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	userPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"--test", "--test-concurrency=1"}
	if pattern != "" {
		args = append(args, "--test-name-pattern="+pattern)
	}
	cmd := exec.CommandContext(ctx, node, append(args, "sdk.test.mjs")...)
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"E2B_API_URL="+h.url, "E2B_SANDBOX_URL="+h.url, "E2B_API_KEY="+h.key,
		"EMBER_TEMPLATE=tiny", "EMBER_WORKDIR="+work, "EMBER_USER_PORT="+strconv.Itoa(userPort),
		"EMBER_MAX_SANDBOXES="+strconv.Itoa(sdkMaxSandboxes))
	if tls {
		ca := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(ca, h.caPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(cmd.Env, "NODE_EXTRA_CA_CERTS="+ca)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test sdk.test.mjs: %v\n%s", err, out)
	}
	return string(out), h
}
