package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/image"
	"github.com/embervm/ember/image/boot"
)

const prepareUsage = `usage: ember-image prepare --json --dir DIR [--home DIR] [--terminal] [--debug] < BLOCK
Reads an Ember image block (the JSON of PUT /ember/image and of a config file's "ember-image":
{"ref", "args", "env", "user", "working_dir", "hostname", "disk", "disk_mib"}) on stdin, makes
the image VM's initrd and writable drive in DIR, and prints on stdout, as JSON, what to boot:
{"kernel", "initrd", "boot_args", "drives": [{"id", "path", "base", "read_only"}]}. ember runs it
for ember run --image, the API and the config file; the caller removes DIR (a "disk" named in the block is kept).
  --dir DIR         an existing folder for this VM's files
  --home DIR        Ember's home folder (default $EMBER_HOME, else /var/lib/ember)
  --terminal        the VM's console is a terminal (the workload gets it cooked)
  --debug           ember-init traces its steps on the console
  --json            answer JSON (the only form; required)
On failure: one line on stderr, exit status 1, and nothing made is left in DIR or at "disk".
`

// maxBlockSize bounds the block read on stdin: the API's payload limit
// (api.DefaultMaxPayload, 51200 bytes, Firecracker's) rounded up; a block
// is a few hundred bytes.
const maxBlockSize = 64 << 10

// prepare is `ember-image prepare --json`.
func prepare(args []string) int {
	fs := flag.NewFlagSet("ember-image prepare", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	home := fs.String("home", image.Home(), "")
	dir := fs.String("dir", "", "")
	terminal := fs.Bool("terminal", false, "")
	debug := fs.Bool("debug", false, "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(prepareUsage)
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "ember-image prepare: %v\n%s", err, prepareUsage)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(os.Stderr, "ember-image prepare: unexpected argument %q (the block is read on stdin)\n", fs.Arg(0))
		return exitUsage
	case !*asJSON:
		fmt.Fprintf(os.Stderr, "ember-image prepare: --json is required (JSON is the only form)\n")
		return exitUsage
	case *dir == "":
		fmt.Fprintf(os.Stderr, "ember-image prepare: --dir DIR is required\n")
		return exitUsage
	}
	b, err := readBlock(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember-image prepare: the block on stdin: %v\n", err)
		return exitUsage
	}
	p, err := prepareBlock(*home, *dir, b, *terminal, *debug)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember-image prepare: image %q: %v\n", b.Ref, err)
		return exitFailure
	}
	if err := json.NewEncoder(os.Stdout).Encode(p); err != nil {
		fmt.Fprintf(os.Stderr, "ember-image prepare: writing the answer: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// readBlock decodes one block from r: unknown fields and anything after
// the value are refused.
func readBlock(r io.Reader) (imageblock.Block, error) {
	var b imageblock.Block
	data, err := io.ReadAll(io.LimitReader(r, maxBlockSize+1))
	if err != nil {
		return b, err
	}
	if len(data) > maxBlockSize {
		return b, fmt.Errorf("larger than %d bytes", maxBlockSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, err
	}
	if dec.More() {
		return b, errors.New("more than one JSON value")
	}
	return b, b.Validate()
}

// prepareBlock makes the files of block b's VM in dir. On failure it
// removes what it made: new files in dir, and b.Disk if it created it.
func prepareBlock(home, dir string, b imageblock.Block, terminal, debug bool) (p *imageblock.Prepared, err error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--dir: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--dir %s: not a folder", dir)
	}
	before := entries(dir)
	diskExisted := false
	if b.Disk != "" {
		_, serr := os.Stat(b.Disk)
		diskExisted = serr == nil
	}
	defer func() {
		if err == nil {
			return
		}
		for name := range entries(dir) {
			if !before[name] {
				os.RemoveAll(filepath.Join(dir, name))
			}
		}
		if b.Disk != "" && !diskExisted {
			os.Remove(b.Disk)
		}
	}()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := image.Open(home, log)
	if err != nil {
		return nil, err
	}
	vm, err := boot.Prepare(context.Background(), store, boot.Options{
		Ref: b.Ref, Args: b.Args, Env: b.Env, User: b.User, WorkingDir: b.WorkingDir, Hostname: b.Hostname,
		Terminal: terminal, Dir: dir, Disk: b.Disk, DiskMiB: b.DiskMiB, Debug: debug,
	})
	if err != nil {
		return nil, err
	}
	kernel, _ := imageblock.DefaultKernel() // "" when there is none: the caller says so
	p = &imageblock.Prepared{Kernel: kernel, Initrd: vm.Initrd, BootArgs: boot.Cmdline}
	for _, d := range vm.Drives {
		p.Drives = append(p.Drives, imageblock.Drive{ID: d.ID, Path: d.Path, Base: d.Base, ReadOnly: d.ReadOnly})
	}
	return p, nil
}

// entries is the set of names in dir.
func entries(dir string) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}
