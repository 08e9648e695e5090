// Command containerd-shim-ember-v2 is containerd's runtime v2 shim for
// Ember (runtime type io.containerd.ember.v2): each task runs in its own
// Ember microVM. containerd runs it; see package shim. Flags and wiring
// only.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/embervm/ember/shim"
)

// Exit statuses.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	fs := flag.NewFlagSet("containerd-shim-ember-v2", flag.ContinueOnError)
	var o shim.Opts
	fs.StringVar(&o.Namespace, "namespace", "", "containerd namespace of the task")
	fs.StringVar(&o.ID, "id", "", "task (container) ID")
	fs.StringVar(&o.Address, "address", "", "containerd's GRPC address")
	fs.StringVar(&o.PublishBinary, "publish-binary", "", "containerd binary (events go over its ttrpc socket instead)")
	fs.StringVar(&o.Bundle, "bundle", "", "the task's bundle (delete)")
	fs.BoolVar(&o.Debug, "debug", false, "log debug lines")
	fs.StringVar(&o.SocketDir, "socket-dir", "", "where the shim's socket goes (default "+shim.DefaultSocketDir+")")
	version := fs.Bool("v", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(exitUsage)
	}
	if *version {
		fmt.Println("containerd-shim-ember-v2 (task API containerd.task.v2.Task)")
		return
	}
	var err error
	switch action := fs.Arg(0); action {
	case shim.ActionStart:
		var self, addr string
		if self, err = os.Executable(); err == nil {
			// The server gets the same flags, without the action.
			args := os.Args[1 : len(os.Args)-fs.NArg()]
			if addr, err = shim.Start(o, self, args); err == nil {
				fmt.Print(addr)
			}
		}
	case shim.ActionDelete:
		err = shim.Delete(o, os.Stdout)
	case "":
		err = shim.Serve(o)
	default:
		fmt.Fprintf(os.Stderr, "containerd-shim-ember-v2: unknown action %q (want start, delete or none)\n", action)
		os.Exit(exitUsage)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-ember-v2: %v\n", err)
		os.Exit(exitFailure)
	}
}
