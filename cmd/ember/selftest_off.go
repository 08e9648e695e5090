//go:build !seccomptest

package main

import "log/slog"

// selfTestHandler is the logger's handler as it is: the seccomp self-test
// (selftest_on.go) exists only in binaries built with -tags seccomptest.
func selfTestHandler(h slog.Handler) slog.Handler { return h }
