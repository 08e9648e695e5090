// Command ember-image is `ember image`: the OCI image store's commands.
// ember hands `ember image ...` to this binary (installed beside it) rather
// than linking the store itself: go-containerregistry's packages and their
// initialisation would cost every VMM process about 1.6 MiB of RSS (7.6
// MiB instead of 6.0 for `ember version`).
//
//	ember image import|pull|ls|inspect|rm|prune [--home DIR] ...
//	ember-image prepare --json --dir DIR [--home DIR] < BLOCK
//
// prepare serves ember's image block (PUT /ember/image, a config file's
// "ember-image"): ember runs it rather than linking the store.
//
// Exit status: 0 on success, 1 when the command fails, 2 for bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/embervm/ember/image"
)

// Exit codes, as ember's.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() { os.Exit(runImage(os.Args[1:])) }

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

const imageUsage = `usage:
  ember image import [--home DIR] PATH [NAME]   add an OCI image layout folder or a docker save tarball
  ember image import --rootfs [--home DIR] TAR NAME   add a root filesystem tarball as a one-layer image
  ember image pull [--home DIR] [--insecure] REF fetch an image from its registry
  ember image ls [--home DIR]                   list the images
  ember image inspect [--home DIR] NAME|ID      print an image's record (layers, config) as JSON
  ember image rm [--home DIR] NAME|ID...        remove names or images, and what nothing else uses
  ember image prune [--home DIR]                remove what no image uses (after a failed import)
  ember-image prepare --json --dir DIR [--home DIR] < BLOCK   make an image VM's files for ember's API
The store lives in DIR/images; DIR defaults to $EMBER_HOME, else /var/lib/ember.
`

// runImage runs one image command; args follow "ember image".
func runImage(args []string) int {
	if len(args) == 0 || isHelp(args[0]) || args[0] == "help" {
		w := os.Stderr
		if len(args) > 0 {
			w = os.Stdout
		}
		fmt.Fprint(w, imageUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "prepare":
		return prepare(args)
	}
	fs := flag.NewFlagSet("ember image "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	home := fs.String("home", image.Home(), "Ember's home folder (the store is HOME/images)")
	insecure, rootfs := false, false
	if cmd == "pull" {
		fs.BoolVar(&insecure, "insecure", false, "allow plain HTTP to the registry")
	}
	if cmd == "import" {
		fs.BoolVar(&rootfs, "rootfs", false, "PATH is a root filesystem tarball: one layer, PATH and /bin/sh as the config")
	}
	argc := map[string][2]int{ // minimum and maximum positional arguments
		"import": {1, 2}, "pull": {1, 1}, "ls": {0, 0}, "inspect": {1, 1}, "rm": {1, -1}, "prune": {0, 0},
	}
	want, ok := argc[cmd]
	if !ok {
		fmt.Fprintf(os.Stderr, "ember image: unknown command %q: want import, pull, ls, inspect, rm or prune\n", cmd)
		return exitUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(os.Stdout, imageUsage)
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "ember image %s: %v\n", cmd, err)
		return exitUsage
	}
	if n := fs.NArg(); n < want[0] || (want[1] >= 0 && n > want[1]) {
		fmt.Fprintf(os.Stderr, "ember image %s: wrong number of arguments\n%s", cmd, imageUsage)
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := image.Open(*home, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember image %s: %v\n", cmd, err)
		return exitFailure
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()

	// Bytes per layer on a terminal; nothing when stderr is a pipe or file.
	var opts image.ImportOptions
	if term.IsTerminal(int(os.Stderr.Fd())) {
		opts.Progress = image.TerminalProgress(os.Stderr)
	}
	err = func() error {
		switch cmd {
		case "import":
			opts.Name = fs.Arg(1)
			importer := store.Import
			if rootfs {
				importer = store.ImportRootfs
			}
			img, err := importer(ctx, fs.Arg(0), opts)
			if err == nil {
				image.WriteAdded(os.Stdout, img)
			}
			return err
		case "pull":
			img, err := store.Pull(ctx, fs.Arg(0), image.PullOptions{ImportOptions: opts, Insecure: insecure})
			if err == nil {
				image.WriteAdded(os.Stdout, img)
			}
			return err
		case "ls":
			imgs, err := store.List()
			if err == nil {
				err = image.WriteTable(os.Stdout, imgs)
			}
			return err
		case "inspect":
			img, err := store.Inspect(fs.Arg(0))
			if err != nil {
				return err
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(img)
		case "rm":
			for _, ref := range fs.Args() {
				res, err := store.Remove(ref)
				if err != nil {
					return err
				}
				image.WriteRemoved(os.Stdout, res)
			}
			return nil
		case "prune":
			freed, err := store.Prune()
			if err == nil {
				fmt.Printf("freed %d bytes\n", freed)
			}
			return err
		}
		return nil
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember image %s: %v\n", cmd, err)
		return exitFailure
	}
	return exitOK
}
