package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// loopbackName is the loopback interface Linux makes in every network
// namespace, down until someone sets it up (net/core/dev.c,
// drivers/net/loopback.c).
const loopbackName = "lo"

// loopbackUp sets the loopback interface up, as every Linux distribution's
// init does: the kernel then gives it 127.0.0.1/8 and ::1. Servers that
// listen on localhost need it, and Ember reaches a guest's ports through
// it (the agent's port.connect).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(loopbackName)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCGIFFLAGS %s: %w", loopbackName, err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCSIFFLAGS %s up: %w", loopbackName, err)
	}
	return nil
}
