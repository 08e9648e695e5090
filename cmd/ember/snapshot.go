package main

import (
	"fmt"
	"os"

	"github.com/embervm/ember/snapshot"
)

// runSnapshot is `ember snapshot describe FILE` and `ember snapshot
// apply-diff BASE DIFF`.
func runSnapshot(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "ember snapshot: want describe FILE or apply-diff BASE DIFF")
		return exitUsage
	}
	switch args[0] {
	case "describe":
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "ember snapshot describe: want one argument, the snapshot state file")
			return exitUsage
		}
		st, err := snapshot.Read(args[1])
		if err == nil {
			err = st.Header.Validate()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot describe:", err)
			return exitFailure
		}
		if err := snapshot.Describe(os.Stdout, st); err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot describe:", err)
			return exitFailure
		}
		return exitOK
	case "apply-diff":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "ember snapshot apply-diff: want two arguments, BASE and DIFF memory files")
			return exitUsage
		}
		if err := snapshot.ApplyDiff(args[1], args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot apply-diff:", err)
			return exitFailure
		}
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "ember snapshot: unknown command %q: want describe or apply-diff\n", args[0])
	return exitUsage
}
