package main

import (
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// consoleActive lists the kernel's consoles; the last is the one
// /dev/console points at (Documentation/ABI/testing/sysfs-tty).
const consoleActive = "/sys/class/tty/console/active"

// consoleDevice returns the node of the console device itself (e.g.
// /dev/ttyS0) from the contents of consoleActive, or /dev/console. The
// device, unlike /dev/console, can become a controlling terminal, so job
// control and Ctrl-C work in an interactive shell (what busybox's
// cttyhack does).
func consoleDevice(active, devDir string) string {
	f := strings.Fields(active)
	if len(f) == 0 || strings.ContainsAny(f[len(f)-1], "/") || f[len(f)-1] == ".." {
		return filepath.Join(devDir, "console")
	}
	return filepath.Join(devDir, f[len(f)-1])
}

// openConsole opens the workload's console and sets its line discipline:
// left as the kernel set it (echo, line editing, signals, "\n" to "\r\n")
// for an interactive terminal, raw otherwise so bytes pass unchanged.
// It reports whether the console is a terminal.
func openConsole(terminal bool) (*os.File, bool, error) {
	active, _ := os.ReadFile(consoleActive)
	var f *os.File
	var err error
	for _, p := range []string{consoleDevice(string(active), devDir), filepath.Join(devDir, "console")} {
		if f, err = os.OpenFile(p, os.O_RDWR|unix.O_NOCTTY, 0); err == nil {
			break
		}
	}
	if err != nil {
		return nil, false, err
	}
	tty := term.IsTerminal(int(f.Fd()))
	if tty && !terminal {
		if _, err := term.MakeRaw(int(f.Fd())); err != nil {
			f.Close()
			return nil, false, err
		}
	}
	return f, tty, nil
}

// ensureStdio gives the init a console on fds 0-2 if the kernel could not
// (no /dev/console in the initramfs when it started init).
func ensureStdio() {
	if _, err := unix.FcntlInt(2, unix.F_GETFD, 0); err == nil {
		return
	}
	fd, err := unix.Open(filepath.Join(devDir, "console"), unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		if i != fd {
			unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
}
