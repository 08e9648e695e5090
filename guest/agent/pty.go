package agent

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// ptmx is the pseudo-terminal multiplexer (devpts, mounted by the init).
const ptmx = "/dev/ptmx"

// openPTY makes a pseudo-terminal pair of the given size: the master for
// the agent (non-blocking, so Go's poller serves it and a read can be
// interrupted) and the slave for the process. The slave comes from
// TIOCGPTPEER (Linux 4.13), which needs no path under /dev/pts; a few
// lines rather than a dependency (creack/pty does the same).
func openPTY(size proto.TTYSize) (master, slave *os.File, err error) {
	mfd, err := unix.Open(ptmx, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", ptmx, err)
	}
	master = os.NewFile(uintptr(mfd), "pty-master")
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil { // unlockpt
		master.Close()
		return nil, nil, fmt.Errorf("unlocking the pty: %w", err)
	}
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		master.Close()
		return nil, nil, fmt.Errorf("opening the pty's slave (TIOCGPTPEER): %w", errno)
	}
	slave = os.NewFile(sfd, "pty-slave")
	if err := setWinsize(master, size); err != nil {
		master.Close()
		slave.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// setWinsize sets a terminal's size (the kernel sends SIGWINCH to its
// foreground process group when it changes).
func setWinsize(f *os.File, size proto.TTYSize) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
	})
	if err == nil {
		err = ioErr
	}
	if err != nil {
		return fmt.Errorf("setting the terminal size: %w", err)
	}
	return nil
}
