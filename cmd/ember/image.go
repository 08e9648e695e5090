package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// imageTool is the binary that serves `ember image ...` (cmd/ember-image),
// looked for beside ember, then on PATH. The image store links
// go-containerregistry, whose packages would cost every VMM process about
// 1.6 MiB of RSS at start-up; keeping it in its own binary keeps ember lean.
const imageTool = "ember-image"

// runImage replaces this process with `ember-image ARGS...`; it returns
// only when that cannot be done.
func runImage(args []string) int {
	path, err := findImageTool()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember image: %v\n", err)
		return exitFailure
	}
	err = unix.Exec(path, append([]string{imageTool}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "ember image: running %s: %v\n", path, err)
	return exitFailure
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
