// Package testbin gives tests the Ember commands they run as child
// processes: built statically, as make build builds them (ember's seccomp
// filters refuse a binary linked with the C library, and a jail holds only
// the exec file).
//
// Where the tests run inside the lab (make test's pass for the KVM tests
// on a host without /dev/kvm), the Go toolchain cannot build there: its
// cache is read-only inside and a build under the lab's emulator would
// take minutes. There make sets EMBER_TEST_BIN to a directory of binaries
// it built beforehand on the host, and Build copies from it instead.
package testbin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Env names the directory of prebuilt binaries (see the package comment).
const Env = "EMBER_TEST_BIN"

// Build puts a static build of the command package pkg (an import path)
// with the build tags given at dir/name and returns that path. With
// EMBER_TEST_BIN set it copies $EMBER_TEST_BIN/name there instead; that
// binary must have been built from the same package and tags.
func Build(dir, name, pkg string, tags ...string) (string, error) {
	out := filepath.Join(dir, name)
	if pre := os.Getenv(Env); pre != "" {
		if err := copyExec(filepath.Join(pre, name), out); err != nil {
			return "", fmt.Errorf("prebuilt %s (%s is set): %w", name, Env, err)
		}
		return out, nil
	}
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// copyExec copies the executable file src to dst.
func copyExec(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}
