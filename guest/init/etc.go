package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/embervm/ember/guest/initconfig"
)

// modeEtcFile is the mode of the /etc files the init writes (world
// readable, as resolvers and every program need them).
const modeEtcFile = 0o644

// writeEtc writes the runtime-managed files under root's /etc (see
// package guest/initconfig): /etc/hostname when a hostname is set, a
// default /etc/hosts when the image has none, /etc/resolv.conf when DNS
// servers are set. They land in the upper layer.
func writeEtc(root string, cfg *initconfig.Config) error {
	etc := filepath.Join(root, "etc")
	if err := mkdirMissing(etc, modeDir); err != nil {
		return fmt.Errorf("/etc: %w", err)
	}
	if cfg.Hostname != "" {
		if err := replaceFile(filepath.Join(etc, "hostname"), cfg.Hostname+"\n"); err != nil {
			return err
		}
	}
	hosts := filepath.Join(etc, "hosts")
	if _, err := os.Lstat(hosts); errors.Is(err, fs.ErrNotExist) {
		if err := replaceFile(hosts, defaultHosts(cfg.Hostname)); err != nil {
			return err
		}
	}
	if len(cfg.DNS) > 0 {
		var b strings.Builder
		for _, s := range cfg.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
		if err := replaceFile(filepath.Join(etc, "resolv.conf"), b.String()); err != nil {
			return err
		}
	}
	return nil
}

// defaultHosts is the /etc/hosts of an image without one: localhost, and
// the hostname on 127.0.1.1 as Debian's installer writes it, so that the
// machine's own name resolves.
func defaultHosts(hostname string) string {
	s := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if hostname != "" {
		s += "127.0.1.1\t" + hostname + "\n"
	}
	return s
}

// replaceFile writes p through a temporary file and a rename, which also
// replaces a symlink at p (an image's resolv.conf often points into /run)
// rather than writing through it.
func replaceFile(p, data string) error {
	tmp := p + ".ember-init.tmp"
	if err := os.WriteFile(tmp, []byte(data), modeEtcFile); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}
