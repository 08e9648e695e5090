package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/term"

	"github.com/embervm/ember/api"
)

// errConfinedImage is PUT /ember/image's answer once a seccomp filter is
// installed: preparing an image runs ember-image, and the filters refuse
// fork and exec (a refused fork from os/exec would kill ember without a
// report, see package seccomp).
var errConfinedImage = errors.New("preparing an ember image runs " + imageTool +
	", and this process's seccomp filter forbids starting a program: give the image in the --config-file's \"ember-image\" " +
	"(prepared before the filter), or start ember with --no-seccomp, or run `" + imageTool +
	" prepare --json` yourself and PUT /boot-source and /drives with its answer")

// imageBlocks serves the API's image block (api.Options.PrepareImage) by
// running `ember-image prepare --json`: ember links no image code (see
// imageTool). Each preparation gets its own folder; the one applied is
// removed when the process ends (cleanup), the others at once. A "disk"
// the block names is kept, unless a failed preparation made it.
type imageBlocks struct {
	log *slog.Logger
	// home, if set, is Ember's home folder (ember-image's default:
	// $EMBER_HOME, else /var/lib/ember).
	home string
	// debug makes the image's ember-init trace its steps on the console.
	debug bool
	// confined is set once a seccomp filter is installed.
	confined atomic.Bool

	mu sync.Mutex
	// kept are the files and folders of the applied image, removed by
	// cleanup in this order.
	kept []string
}

// prepare runs ember-image for block b.
func (ib *imageBlocks) prepare(b api.EmberImage) (api.PreparedImage, func(), error) {
	var p api.PreparedImage
	if ib.confined.Load() {
		return p, nil, errConfinedImage
	}
	tool, err := findImageTool()
	if err != nil {
		return p, nil, err
	}
	block, err := json.Marshal(b)
	if err != nil {
		return p, nil, err
	}
	newDisk := false
	if b.Disk != "" {
		_, err := os.Stat(b.Disk)
		newDisk = errors.Is(err, os.ErrNotExist)
	}
	dir, err := os.MkdirTemp("", "ember-image-")
	if err != nil {
		return p, nil, fmt.Errorf("a folder for the image's files: %w", err)
	}
	args := []string{"prepare", "--json", "--dir", dir}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		args = append(args, "--terminal")
	}
	if ib.home != "" {
		args = append(args, "--home", ib.home)
	}
	if ib.debug {
		args = append(args, "--debug")
	}
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(block)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return p, nil, fmt.Errorf("%s: %s", tool, toolError(stderr.String(), b.Ref, err))
	}
	if err := json.Unmarshal(stdout.Bytes(), &p); err != nil {
		os.RemoveAll(dir)
		if newDisk {
			os.Remove(b.Disk)
		}
		return p, nil, fmt.Errorf("%s prepare answered no JSON: %w", tool, err)
	}
	// What the process removes at exit: the files prepare made in dir
	// (by name: once the guest runs, the seccomp filter refuses listing a
	// folder), then dir.
	var files []string
	if filepath.Dir(p.Initrd) == dir {
		files = append(files, p.Initrd)
	}
	for _, d := range p.Drives {
		if filepath.Dir(d.Path) == dir {
			files = append(files, d.Path)
		}
	}
	files = append(files, dir)
	ib.mu.Lock()
	ib.kept = append(ib.kept, files...)
	ib.mu.Unlock()
	discard := func() {
		ib.mu.Lock()
		ib.kept = ib.kept[:len(ib.kept)-len(files)]
		ib.mu.Unlock()
		os.RemoveAll(dir)
		if newDisk {
			os.Remove(b.Disk)
		}
	}
	ib.log.Debug("ember image prepared", "ref", b.Ref, "drives", len(p.Drives), "dir", dir)
	return p, discard, nil
}

// cleanup removes the applied image's files (not a disk the block named).
func (ib *imageBlocks) cleanup() {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	for _, f := range ib.kept {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			ib.log.Warn("removing the ember image's files", "err", err)
		}
	}
	ib.kept = nil
}

// toolError is the one line that says why ember-image failed: its last
// line on stderr without the words ember's error adds itself.
func toolError(stderr, ref string, err error) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return err.Error()
	}
	last = strings.TrimPrefix(last, imageTool+" prepare: ")
	return strings.TrimPrefix(last, fmt.Sprintf("image %q: ", ref))
}

// findImageTool finds ember-image beside ember, then on PATH.
func findImageTool() (string, error) {
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), imageTool); isExecutable(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath(imageTool)
	if err != nil {
		return "", fmt.Errorf("%s is not installed beside ember nor on PATH (it is built with ember: go build ./cmd/...)", imageTool)
	}
	return p, nil
}
