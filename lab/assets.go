package lab

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/embervm/ember/initrd"
)

// labInit is the lab VM's /init.
//
//go:embed labinit.sh
var labInit []byte

// LabKernelMetaPackage is the Debian package whose dependency is the lab
// kernel: the generic kernel, which has 9p as modules (the cloud kernel has
// no 9p).
const LabKernelMetaPackage = "linux-image-amd64"

// busyboxPath is Debian's busybox-static binary.
const busyboxPath = "/bin/busybox"

// assetsFormat is bumped when the layout of the lab assets changes, so that
// it is part of the cache key even if nothing else changed.
const assetsFormat = "ember-lab-assets-3"

// Names of the lab assets inside their cache directory.
const (
	// labKernelName is the ELF vmlinux if the kernel has a PVH entry point
	// (QEMU then boots it directly, which saves the ~3 s that decompressing
	// the bzImage takes under TCG), else the bzImage.
	labKernelName = "kernel"
	labInitrdName = "initramfs.cpio.gz"
)

// The kernel modules the lab loads, with their dependencies resolved from
// modules.dep. labModules are needed before the job can start: 9p over
// virtio-pci for the host root and kvm-amd for /dev/kvm. labLateModules are
// what Ember's tests need for vsock and networking, emberd's sandbox
// networks included: nftables with conntrack, fib, masquerade, NAT chains
// and named-counter references, loaded up front because a module the
// kernel loads itself in the middle of an nftables batch can leave the
// batch unacknowledged (google/nftables issue 329); crc32c_generic is
// libcrc32c's soft dependency (nf_conntrack and nf_tables need it), which
// modules.dep does not name; overlay for containerd's snapshots (the
// shim's test). The init loads them in
// the background while it mounts the host root, and waits for them before
// it starts the job. Each module costs boot time (roughly 0.1 s under TCG).
const (
	labModules     = "9p 9pnet_virtio virtio_pci virtio_rng kvm_amd"
	labLateModules = "tun bridge veth vhost_net vhost_vsock af_packet crc32c_generic nf_tables nft_ct nft_fib_inet nft_masq nft_chain_nat nft_objref nf_conntrack_netlink overlay"
)

// LabModules returns the names of the modules the lab loads, before
// dependency resolution.
func LabModules() []string { return strings.Fields(labModules + " " + labLateModules) }

// SplitModules resolves the early and the late modules: early is a valid
// load order for the early ones, late one for the rest (whose dependencies
// are in early or earlier in late).
func SplitModules(db *ModuleDB, earlyNames, lateNames []string) (early, late []string, err error) {
	early, err = db.Resolve(earlyNames)
	if err != nil {
		return nil, nil, err
	}
	all, err := db.Resolve(append(append([]string(nil), earlyNames...), lateNames...))
	if err != nil {
		return nil, nil, err
	}
	inEarly := make(map[string]bool, len(early))
	for _, m := range early {
		inEarly[m] = true
	}
	for _, m := range all {
		if !inEarly[m] {
			late = append(late, m)
		}
	}
	return early, late, nil
}

// Assets are the files needed to boot the lab VM.
type Assets struct {
	Kernel string // bzImage of the lab kernel
	Initrd string // the lab initramfs
	// KernelPackage and KernelVersion identify the Debian kernel package.
	KernelPackage, KernelVersion string
}

// Config configures the lab.
type Config struct {
	// CacheDir holds downloaded packages, lab assets and job directories.
	CacheDir string
	// Log receives progress messages.
	Log *slog.Logger
}

func (c Config) logger() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (c Config) cacheDir() string {
	if c.CacheDir != "" {
		return c.CacheDir
	}
	return CacheDirFromEnv()
}

// dependsPattern finds the versioned kernel package in apt-cache's Depends.
const dependsPattern = `(linux-image-[0-9][^ ,|()]*)\s*\(=\s*([^)\s]+)\)`

// ParseKernelDepends extracts the versioned kernel image package and its
// version from `apt-cache show` output for a linux-image meta package.
func ParseKernelDepends(show string) (pkg, version string, err error) {
	re := regexp.MustCompile(dependsPattern)
	sc := bufio.NewScanner(strings.NewReader(show))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Depends:") {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			return m[1], m[2], nil
		}
	}
	return "", "", fmt.Errorf("no versioned linux-image dependency in apt-cache output")
}

// ResolveKernelPackage asks apt which versioned package meta depends on.
func ResolveKernelPackage(ctx context.Context, meta string) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", meta).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s (run make setup?): %w", meta, commandError(err))
	}
	pkg, version, err = ParseKernelDepends(string(out))
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", meta, err)
	}
	return pkg, version, nil
}

// aptListsDir changes (its mtime) whenever apt-get update fetches new lists.
const aptListsDir = "/var/lib/apt/lists"

// resolveKernelPackageCached is ResolveKernelPackage remembered in the cache
// until apt's package lists change: apt-cache takes most of a second, which
// would be most of a warm start's host-side overhead.
func resolveKernelPackageCached(ctx context.Context, cache, meta string) (pkg, version string, err error) {
	st, err := os.Stat(aptListsDir)
	if err != nil {
		return ResolveKernelPackage(ctx, meta)
	}
	stamp := fmt.Sprintf("%s %d", meta, st.ModTime().UnixNano())
	memo := filepath.Join(cache, "lab", "kernel-package")
	if b, err := os.ReadFile(memo); err == nil {
		if f := strings.Fields(string(b)); len(f) == 4 && f[0]+" "+f[1] == stamp {
			return f[2], f[3], nil
		}
	}
	pkg, version, err = ResolveKernelPackage(ctx, meta)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(filepath.Dir(memo), 0o755); err == nil {
		_ = writeFileAtomic(memo, []byte(stamp+" "+pkg+" "+version+"\n"), 0o644)
	}
	return pkg, version, nil
}

// DownloadPackage fetches pkg=version with `apt-get download` into
// cacheDir/debs (once) and returns the path of the .deb.
func DownloadPackage(ctx context.Context, cacheDir, pkg, version string, log *slog.Logger) (string, error) {
	debs := filepath.Join(cacheDir, "debs")
	dest := filepath.Join(debs, pkg+"_"+strings.ReplaceAll(version, ":", "%3a")+"_amd64.deb")
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", debs, err)
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return "", fmt.Errorf("creating download directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	log.Info("downloading", "package", pkg, "version", version)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg+"="+version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %w: %s", pkg, version, err, bytes.TrimSpace(out))
	}
	got, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(got) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s produced %d .deb files", pkg, version, len(got))
	}
	if err := os.Rename(got[0], dest); err != nil {
		return "", fmt.Errorf("moving the package into the cache: %w", err)
	}
	return dest, nil
}

// Prepare returns the lab assets, building them in the cache if needed: the
// kernel package is downloaded and unpacked, depmod run on its modules, and
// the initramfs assembled from busybox, the lab init and the modules.
func Prepare(ctx context.Context, cfg Config) (Assets, error) {
	log := cfg.logger()
	cache := cfg.cacheDir()
	pkg, version, err := resolveKernelPackageCached(ctx, cache, LabKernelMetaPackage)
	if err != nil {
		return Assets{}, err
	}
	bbHash, err := fileHash(busyboxPath)
	if err != nil {
		return Assets{}, fmt.Errorf("busybox-static (run make setup?): %w", err)
	}
	key := CacheKey([]byte(assetsFormat), []byte(pkg), []byte(version), labInit,
		[]byte(labModules), []byte(labLateModules), []byte(bbHash))
	dir := filepath.Join(cache, "lab", "assets-"+key)
	assets := Assets{
		Kernel:        filepath.Join(dir, labKernelName),
		Initrd:        filepath.Join(dir, labInitrdName),
		KernelPackage: pkg,
		KernelVersion: version,
	}
	if assetsPresent(assets) {
		return assets, nil
	}

	unlock, err := lockFile(filepath.Join(cache, "lab", ".prepare.lock"))
	if err != nil {
		return Assets{}, err
	}
	defer unlock()
	if assetsPresent(assets) { // built by another ember-lab meanwhile
		return assets, nil
	}
	start := time.Now()
	log.Info("preparing lab assets (once)", "dir", dir)
	deb, err := DownloadPackage(ctx, cache, pkg, version, log)
	if err != nil {
		return Assets{}, err
	}
	if err := buildAssets(ctx, deb, dir, log); err != nil {
		return Assets{}, err
	}
	log.Info("lab assets ready", "dir", dir, "took", time.Since(start).Round(time.Millisecond))
	pruneOldAssets(filepath.Dir(dir), filepath.Base(dir), log)
	return assets, nil
}

// pruneOldAssets removes asset directories other than keep (older kernel
// versions, older inits). A lab already running keeps its open files.
func pruneOldAssets(labDir, keep string, log *slog.Logger) {
	old, err := filepath.Glob(filepath.Join(labDir, "assets-*"))
	if err != nil {
		return
	}
	for _, d := range old {
		if filepath.Base(d) != keep {
			log.Info("removing old lab assets", "dir", d)
			_ = os.RemoveAll(d)
		}
	}
}

func assetsPresent(a Assets) bool {
	for _, p := range []string{a.Kernel, a.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// buildAssets unpacks deb and writes the kernel and initramfs into dir.
func buildAssets(ctx context.Context, deb, dir string, log *slog.Logger) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", parent, err)
	}
	work, err := os.MkdirTemp(parent, ".unpack-")
	if err != nil {
		return fmt.Errorf("creating unpack directory: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	log.Info("unpacking", "deb", deb)
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, bytes.TrimSpace(out))
	}
	kver, err := moduleVersionDir(root)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", root, kver).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %w: %s", root, kver, err, bytes.TrimSpace(out))
	}
	modDir := filepath.Join(root, "lib", "modules", kver)
	db, err := loadModuleDB(modDir)
	if err != nil {
		return err
	}
	early, late, err := SplitModules(db, strings.Fields(labModules), strings.Fields(labLateModules))
	if err != nil {
		return fmt.Errorf("resolving lab modules: %w", err)
	}
	order := append(append([]string(nil), early...), late...)
	entries := []initrd.Entry{
		{Name: "init", Mode: initrd.ModeExec, Data: labInit},
		{Name: "bin/busybox", Mode: initrd.ModeExec, Source: busyboxPath},
		{Name: "etc/ember-lab/modules", Mode: initrd.ModeFile, Data: []byte(strings.Join(early, "\n") + "\n")},
		{Name: "etc/ember-lab/modules.late", Mode: initrd.ModeFile, Data: []byte(strings.Join(late, "\n") + "\n")},
	}
	for _, name := range order {
		rel := db.Path[name]
		if !strings.HasSuffix(rel, ".ko") {
			return fmt.Errorf("module %s is compressed (%s); the lab init's insmod expects plain .ko files", name, rel)
		}
		entries = append(entries, initrd.Entry{Name: "lib/modules/" + name + ".ko", Mode: initrd.ModeFile, Source: filepath.Join(modDir, rel)})
	}
	var buf bytes.Buffer
	if err := initrd.Write(&buf, entries); err != nil {
		return fmt.Errorf("building the lab initramfs: %w", err)
	}
	stage := filepath.Join(work, "assets")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", stage, err)
	}
	if err := os.WriteFile(filepath.Join(stage, labInitrdName), buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the lab initramfs: %w", err)
	}
	bzImage := filepath.Join(root, "boot", "vmlinuz-"+kver)
	kernelKind := "ELF vmlinux (PVH entry)"
	pvh, err := extractPVHVmlinux(ctx, bzImage, filepath.Join(stage, labKernelName))
	if err != nil {
		return err
	}
	if !pvh {
		kernelKind = "bzImage"
		if err := os.Rename(bzImage, filepath.Join(stage, labKernelName)); err != nil {
			return fmt.Errorf("taking the lab kernel from the package: %w", err)
		}
	}
	manifest := fmt.Sprintf("kernel %s, %s\nmodules %s\nlate modules %s\n",
		kver, kernelKind, strings.Join(early, " "), strings.Join(late, " "))
	if err := os.WriteFile(filepath.Join(stage, "MANIFEST"), []byte(manifest), 0o644); err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing stale %s: %w", dir, err)
	}
	if err := os.Rename(stage, dir); err != nil {
		return fmt.Errorf("installing lab assets into %s: %w", dir, err)
	}
	log.Info("lab initramfs", "modules", len(order), "bytes", buf.Len())
	return nil
}

// moduleVersionDir returns the single kernel version under root/lib/modules.
func moduleVersionDir(root string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if err != nil {
		return "", fmt.Errorf("kernel package has no lib/modules: %w", err)
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("kernel package has %d directories in lib/modules, want 1", len(ents))
	}
	return ents[0].Name(), nil
}

func loadModuleDB(modDir string) (*ModuleDB, error) {
	dep, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("opening modules.dep: %w", err)
	}
	defer dep.Close()
	builtin, err := os.Open(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("opening modules.builtin: %w", err)
	}
	defer builtin.Close()
	db, err := ParseModulesDep(dep, builtin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", modDir, err)
	}
	return db, nil
}

// commandError adds a command's stderr to its error, if it has any.
func commandError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
