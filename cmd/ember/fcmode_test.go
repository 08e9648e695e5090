package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
)

// hangLimit bounds waits for things that take milliseconds: reaching it is
// a hang, not a slow run.
const hangLimit = 30 * time.Second

// TestFirecrackerFlagErrors: bad Firecracker-mode arguments get one line
// and Firecracker's exit code 153, and leave no socket behind.
func TestFirecrackerFlagErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	notJSON := write(t, "meta.txt", []byte("not json"))
	big := write(t, "big.json", []byte(`{"a": "0123456789"}`))
	for _, args := range [][]string{
		{"--api-sock", sock, "--mmds-size-limit", "-1"},
		{"--api-sock", sock, "--metadata", "/nonexistent/meta.json"},
		{"--api-sock", sock, "--metadata", notJSON},
		{"--api-sock", sock, "--metadata", big, "--mmds-size-limit", "10"},
		{"--no-api"},
		{"--api-sock", sock, "--bogus"},
		{"--api-sock", sock, "--id", "bad id!"},
		{"--api-sock", sock, "--level", "Loud"},
		{"--api-sock", sock, "--http-api-max-payload-size", "0"},
		{"--api-sock", sock, "extra"},
	} {
		_, stderr, code, _ := runEmber(t, args...)
		if code != exitBadArguments || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("ember %s: exit %d, stderr %q; want 153 and one line", strings.Join(args, " "), code, stderr)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("ember %s left the socket behind", strings.Join(args, " "))
		}
	}
}

// TestMetadataFlag: --metadata fills the MMDS data store before the API
// answers; --mmds-size-limit bounds it.
func TestMetadataFlag(t *testing.T) {
	meta := write(t, "meta.json", []byte("{\n  \"latest\": {\"meta-data\": {\"id\": \"i-1\"}}\n}\n"))
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmd := exec.Command(emberBin, "--api-sock", sock, "--metadata", meta, "--mmds-size-limit", "64")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}
	c := client.New(sock)
	got, err := c.GetMMDS(ctx)
	if err != nil || string(got) != `{"latest":{"meta-data":{"id":"i-1"}}}` {
		t.Fatalf("GET /mmds: %s %v", got, err)
	}
	err = c.PatchMMDS(ctx, map[string]string{"more": strings.Repeat("x", 64)})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 413 {
		t.Fatalf("PATCH over the limit: %v", err)
	}
}

// TestBadConfigFile: a config file that is not JSON, has an unknown key,
// names a missing kernel or is larger than the limit gets one line naming
// the problem (and the file) and exit 152.
func TestBadConfigFile(t *testing.T) {
	for name, c := range map[string]struct{ body, want string }{
		"not json":       {`{"boot-source": `, "incomplete"},
		"unknown key":    {`{"boot-source": {"kernel_image_path": "/nonexistent"}, "drives": [], "turbo": true}`, "turbo"},
		"missing kernel": {`{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}, "drives": []}`, "/nonexistent/vmlinux"},
		// Valid JSON, padded past the limit: refused for its size alone.
		"too large": {strings.Repeat(" ", maxConfigFileSize) + `{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}`,
			"1048576-byte (1 MiB) limit"},
	} {
		cfg := write(t, "config.json", []byte(c.body))
		_, stderr, code, _ := runEmber(t, "--no-api", "--config-file", cfg)
		if code != exitBadConfig || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q; want 152 and one line", name, code, stderr)
		}
		if !strings.Contains(stderr, cfg) || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: stderr %q does not name the file and %q", name, stderr, c.want)
		}
	}
}

// TestConfigFileNoAPI boots the tiny guest from a config file without an
// API: Ember exits 0 when the guest resets.
func TestConfigFileNoAPI(t *testing.T) {
	testkvm.Need(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	cfg, _ := json.Marshal(map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 64},
	})
	_, stderr, code, _ := runEmber(t, "--no-api", "--boot-timer", "--config-file", write(t, "vm.json", cfg))
	if code != 0 || !strings.Contains(stderr, "Guest-boot-time") {
		t.Fatalf("exit %d, want 0 and a boot time\n%s", code, stderr)
	}
}

// TestAPIBootsTinyGuest configures and starts the tiny guest through the
// API socket only, as a Firecracker client would, and checks the answers
// to bad requests along the way.
func TestAPIBootsTinyGuest(t *testing.T) {
	testkvm.Need(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmd := exec.Command(emberBin, "--api-sock", sock, "--id", "tiny-1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}
	c := client.New(sock)
	info, err := c.Describe(ctx)
	if err != nil || info.State != "Not started" || info.ID != "tiny-1" {
		t.Fatalf("GET /: %+v, %v", info, err)
	}
	// Bad input: a 400 that names the problem, and nothing changes.
	vcpus, mem := 0, 64
	err = c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mem})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || !strings.Contains(e.FaultMessage, "vcpu_count") {
		t.Fatalf("vcpu_count 0: %v", err)
	}
	if err := c.InstanceStart(ctx); err == nil {
		t.Fatal("InstanceStart without a boot source succeeded")
	}
	vcpus = 1
	if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mem}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("exit %d after the guest reset\n%s", cmd.ProcessState.ExitCode(), stderr.String())
		}
	case <-time.After(hangLimit):
		t.Fatalf("ember did not exit after the guest reset\n%s", stderr.String())
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the API socket is left behind after exit")
	}
}
