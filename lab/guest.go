package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/embervm/ember/initrd"
)

// guestInitramfsFormat is bumped when the guest initramfs layout changes.
const guestInitramfsFormat = "ember-guest-initramfs-1"

// GuestInitramfsOptions describe the test guests' initramfs.
type GuestInitramfsOptions struct {
	// Init is the host path of the init script (guest/testinit/init).
	Init string
	// Busybox is the static busybox binary (default /bin/busybox).
	Busybox string
	// Out is where the archive is copied (build/guest/initramfs.cpio.gz).
	Out string
	// ModuleDir, if set, is a kernel's lib/modules/VERSION directory (with
	// modules.dep); Modules and their dependencies are copied from it to
	// /lib/modules/NAME.ko and listed, in load order, in
	// /etc/ember-guest/modules, which the test init insmods.
	ModuleDir string
	Modules   []string
}

// BuildGuestInitramfs builds (or takes from the cache) a gzip-compressed
// initramfs with busybox, a symlink for each of its applets in /bin, and the
// given init as /init, and copies it to opts.Out. The cache key is the
// content of the init and of busybox; the archive is reproducible.
func BuildGuestInitramfs(ctx context.Context, cfg Config, opts GuestInitramfsOptions) (string, error) {
	busybox := opts.Busybox
	if busybox == "" {
		busybox = busyboxPath
	}
	initData, err := os.ReadFile(opts.Init)
	if err != nil {
		return "", fmt.Errorf("reading the guest init: %w", err)
	}
	bbHash, err := fileHash(busybox)
	if err != nil {
		return "", fmt.Errorf("busybox-static (run make setup?): %w", err)
	}
	keyParts := [][]byte{[]byte(guestInitramfsFormat), initData, []byte(bbHash)}
	var modEntries []initrd.Entry
	if opts.ModuleDir != "" {
		db, err := loadModuleDB(opts.ModuleDir)
		if err != nil {
			return "", err
		}
		order, err := db.Resolve(opts.Modules)
		if err != nil {
			return "", fmt.Errorf("guest modules: %w", err)
		}
		for _, name := range order {
			src := filepath.Join(opts.ModuleDir, db.Path[name])
			h, err := fileHash(src)
			if err != nil {
				return "", fmt.Errorf("guest module %s: %w", name, err)
			}
			keyParts = append(keyParts, []byte(name+" "+h))
			modEntries = append(modEntries, initrd.Entry{Name: "lib/modules/" + name + ".ko", Mode: initrd.ModeFile, Source: src})
		}
		modEntries = append(modEntries, initrd.Entry{Name: "etc/ember-guest/modules", Mode: initrd.ModeFile, Data: []byte(strings.Join(order, "\n") + "\n")})
	}
	key := CacheKey(keyParts...)
	cached := filepath.Join(cfg.cacheDir(), "guest", "initramfs-"+key+".cpio.gz")
	if _, err := os.Stat(cached); err != nil {
		applets, err := busyboxApplets(ctx, busybox)
		if err != nil {
			return "", err
		}
		entries := []initrd.Entry{
			{Name: "init", Mode: initrd.ModeExec, Data: initData},
			{Name: "bin/busybox", Mode: initrd.ModeExec, Source: busybox},
			{Name: "dev", Dir: true, Mode: initrd.ModeDir},
			{Name: "proc", Dir: true, Mode: initrd.ModeDir},
			{Name: "sys", Dir: true, Mode: initrd.ModeDir},
			{Name: "tmp", Dir: true, Mode: 0o1777},
			{Name: "root", Dir: true, Mode: 0o700},
		}
		entries = append(entries, modEntries...)
		for _, a := range applets {
			if a != "busybox" {
				entries = append(entries, initrd.Entry{Name: "bin/" + a, Target: "busybox"})
			}
		}
		var buf bytes.Buffer
		if err := initrd.Write(&buf, entries); err != nil {
			return "", fmt.Errorf("building the guest initramfs: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
			return "", fmt.Errorf("creating the cache directory: %w", err)
		}
		if err := writeFileAtomic(cached, buf.Bytes(), 0o644); err != nil {
			return "", err
		}
		cfg.logger().Info("built guest initramfs", "path", cached, "applets", len(applets), "bytes", buf.Len())
	}
	if opts.Out != "" {
		if err := copyIfChanged(cached, opts.Out); err != nil {
			return "", err
		}
	}
	return cached, nil
}

// busyboxApplets lists the applets of a busybox binary, sorted and without
// directories (busybox --list prints bare names).
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, commandError(err))
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applets", busybox)
	}
	return applets, nil
}
