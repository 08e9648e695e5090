// Command ember-rusage runs a command and reports its wall time and its own
// peak RSS on file descriptor 3, for the benchmarks (see package rusage).
// It imports nothing else, so that its own peak stays small.
package main

import (
	"os"

	"github.com/embervm/ember/bench/rusage"
)

func main() { os.Exit(rusage.Measure(os.Args[1:])) }
