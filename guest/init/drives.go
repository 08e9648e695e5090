package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/embervm/ember/guest/initconfig"
)

const (
	// sysBlock lists the block devices; a virtio-blk disk has a "serial"
	// attribute holding the ID the device answers to VIRTIO_BLK_T_GET_ID
	// (drivers/block/virtio_blk.c, serial_show).
	sysBlock = "/sys/block"
	devDir   = "/dev"
	// driveWait bounds the wait for the drives to appear. Built-in
	// virtio-blk probes its disks before init runs, so the first look
	// normally finds them all; the wait covers a slow probe, and a drive
	// the host did not attach fails after it.
	driveWait = 5 * time.Second
	// drivePoll is how often the drives are looked for while waiting.
	drivePoll = 10 * time.Millisecond
)

// wantedDrives lists the serials the config needs, with the field naming
// each.
func wantedDrives(cfg *initconfig.Config) map[string]string {
	want := map[string]string{}
	for i, l := range cfg.Layers {
		want[l.Serial] = fmt.Sprintf("layers[%d]", i)
	}
	if cfg.Writable != nil {
		want[cfg.Writable.Serial] = "writable"
	}
	return want
}

// findDrives waits up to timeout for a drive with every wanted serial to
// appear in sysBlock with its node in devDir, and returns serial -> node.
func findDrives(sysBlock, devDir string, want map[string]string, timeout time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		found, err := scanDrives(sysBlock, devDir)
		if err != nil {
			return nil, err
		}
		var missing []string
		for serial, field := range want {
			if _, ok := found[serial]; !ok {
				missing = append(missing, fmt.Sprintf("%s (serial %q)", field, serial))
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			return nil, fmt.Errorf("no drive for %s; drives present: %s", strings.Join(missing, ", "), describe(found))
		}
		time.Sleep(drivePoll)
	}
}

// scanDrives reads the serial of every block device whose node exists. Two
// drives with one serial are an error: the host gave every drive its own ID.
func scanDrives(sysBlock, devDir string) (map[string]string, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("listing drives: %w", err)
	}
	found := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "serial"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // not a virtio-blk disk
		}
		if err != nil {
			return nil, fmt.Errorf("reading the serial of %s: %w", e.Name(), err)
		}
		serial := strings.TrimSpace(string(b))
		node := filepath.Join(devDir, e.Name())
		if serial == "" {
			continue
		}
		if _, err := os.Stat(node); err != nil {
			continue // devtmpfs has not made the node yet
		}
		if other, dup := found[serial]; dup {
			return nil, fmt.Errorf("drives %s and %s both have serial %q", other, node, serial)
		}
		found[serial] = node
	}
	return found, nil
}

// describe lists drives as "/dev/vda=layer0, ..." for an error message.
func describe(found map[string]string) string {
	if len(found) == 0 {
		return "none"
	}
	var s []string
	for serial, node := range found {
		s = append(s, node+"="+serial)
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}
