package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/embervm/ember/devices"
	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/guest/ociuser"
)

func config() *initconfig.Config {
	return &initconfig.Config{
		Version: initconfig.Version, Mode: initconfig.ModeRun,
		Layers: []initconfig.Drive{
			{Serial: "layer0", FSType: initconfig.FSErofs},
			{Serial: "layer1", FSType: initconfig.FSErofs},
			{Serial: "layer2", FSType: initconfig.FSExt4},
		},
		Writable: &initconfig.Drive{Serial: "rw", FSType: initconfig.FSExt4},
		Args:     []string{"sh"},
	}
}

func lines(plan []step) []string {
	var out []string
	for _, s := range plan {
		out = append(out, s.String())
	}
	return out
}

// The drives are taken by serial, whatever their /dev order; the overlay
// lists the topmost layer first.
func TestRootPlan(t *testing.T) {
	drives := map[string]string{"layer0": "/dev/vdc", "layer1": "/dev/vda", "layer2": "/dev/vdd", "rw": "/dev/vdb"}
	plan, err := rootPlan(config(), drives)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mkdir /ember/layers/0 0755",
		"mount -t erofs /dev/vdc /ember/layers/0 -o ro",
		"mkdir /ember/layers/1 0755",
		"mount -t erofs /dev/vda /ember/layers/1 -o ro",
		"mkdir /ember/layers/2 0755",
		"mount -t ext4 /dev/vdd /ember/layers/2 -o ro",
		"mkdir /ember/rw 0755",
		"mount -t ext4 /dev/vdb /ember/rw",
		"mkdir /ember/rw/upper 0755",
		"mkdir /ember/rw/work 0755",
		"mkdir /ember/root 0755",
		"mount -t overlay overlay /ember/root -o lowerdir=/ember/layers/2:/ember/layers/1:/ember/layers/0,upperdir=/ember/rw/upper,workdir=/ember/rw/work",
	}
	if got := lines(plan); !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Without a writable drive the upper layer is a tmpfs; without layers the
// lower is an empty directory.
func TestRootPlanWithoutDrives(t *testing.T) {
	cfg := config()
	cfg.Layers, cfg.Writable = nil, nil
	plan, err := rootPlan(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mkdir /ember/empty 0755",
		"mkdir /ember/rw 0755",
		"mount -t tmpfs tmpfs /ember/rw -o mode=0755",
		"mkdir /ember/rw/upper 0755",
		"mkdir /ember/rw/work 0755",
		"mkdir /ember/root 0755",
		"mount -t overlay overlay /ember/root -o lowerdir=/ember/empty,upperdir=/ember/rw/upper,workdir=/ember/rw/work",
	}
	if got := lines(plan); !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := rootPlan(config(), map[string]string{"layer0": "/dev/vda"}); err == nil || err.Error() != `layers[1]: no drive with serial "layer1"` {
		t.Errorf("missing drive: %v", err)
	}
}

func TestOverlayOptions(t *testing.T) {
	for _, tc := range []struct {
		lowers []string
		want   string
	}{
		{[]string{"/l/0"}, "lowerdir=/l/0,upperdir=/u,workdir=/w"},
		{[]string{"/l/0", "/l/1"}, "lowerdir=/l/1:/l/0,upperdir=/u,workdir=/w"},
	} {
		in := slices.Clone(tc.lowers)
		if got := overlayOptions(tc.lowers, "/u", "/w"); got != tc.want {
			t.Errorf("overlayOptions(%q) = %q, want %q", tc.lowers, got, tc.want)
		}
		if !reflect.DeepEqual(in, tc.lowers) {
			t.Error("overlayOptions changed its argument")
		}
	}
	// The most layers a config may have still fit in the page Linux
	// allows for mount options.
	var lowers []string
	for i := 0; i < initconfig.MaxLayers; i++ {
		lowers = append(lowers, filepath.Join(layersDir, strings.Repeat("9", len("127"))))
	}
	if n := len(overlayOptions(lowers, upperDir, workDir)); n >= os.Getpagesize() {
		t.Errorf("overlay options of %d layers: %d bytes", initconfig.MaxLayers, n)
	}
}

func TestSystemPlan(t *testing.T) {
	cfg := config()
	cfg.ShmSizeMiB = 256
	got := lines(systemPlan(cfg))
	want := []string{
		"mkdir /proc 0555",
		"mount -t proc proc /proc -o nosuid,nodev,noexec",
		"mkdir /sys 0555",
		"mount -t sysfs sysfs /sys -o nosuid,nodev,noexec",
		"mkdir /dev 0755",
		"mount -t devtmpfs devtmpfs /dev -o nosuid,noexec,mode=0755",
		"mkdir /dev/pts 0755",
		"mount -t devpts devpts /dev/pts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
		"mkdir /dev/shm 01777",
		"mount -t tmpfs shm /dev/shm -o nosuid,nodev,mode=1777,size=256m",
		"mkdir /run 0755",
		"mount -t tmpfs tmpfs /run -o nosuid,nodev,mode=0755",
		"mkdir /tmp 01777",
		"mount -t tmpfs tmpfs /tmp -o nosuid,nodev,mode=1777",
		"symlink /dev/fd -> /proc/self/fd",
		"symlink /dev/stdin -> /proc/self/fd/0",
		"symlink /dev/stdout -> /proc/self/fd/1",
		"symlink /dev/stderr -> /proc/self/fd/2",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	cfg.ShmSizeMiB = 0
	if s := lines(systemPlan(cfg))[9]; s != "mount -t tmpfs shm /dev/shm -o nosuid,nodev,mode=1777" {
		t.Errorf("default /dev/shm: %s", s)
	}
}

// The steps that touch no mount table: directories are created with their
// mode (sticky bit included) only where missing, symlinks only where
// nothing is.
func TestExecuteMkdirAndSymlink(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "ember/rw/upper/kept"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Symlink("elsewhere", filepath.Join(root, "link"))
	plan := []step{
		mkdir("/ember/rw/upper", modeDir),
		mkdir("/tmp", modeSticky),
		mkdir("/a/b/c", modeProc),
		{kind: stepSymlink, path: "/fd", source: "/proc/self/fd"},
		{kind: stepSymlink, path: "/link", source: "/other"},
	}
	var seen []string
	if err := execute(root, plan, func(s string) { seen = append(seen, s) }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(seen, lines(plan)) {
		t.Errorf("debug saw %q", seen)
	}
	for p, want := range map[string]os.FileMode{
		"ember/rw/upper": os.ModeDir | 0o700, // an earlier boot's: kept as it was
		"tmp":            os.ModeDir | os.ModeSticky | 0o777,
		"a":              os.ModeDir | 0o755,
		"a/b/c":          os.ModeDir | 0o555,
	} {
		st, err := os.Stat(filepath.Join(root, p))
		if err != nil || st.Mode() != want {
			t.Errorf("%s: %v, %v; want %v", p, st.Mode(), err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "ember/rw/upper/kept")); err != nil {
		t.Errorf("upper's contents: %v", err)
	}
	for link, want := range map[string]string{"fd": "/proc/self/fd", "link": "elsewhere"} {
		if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != want {
			t.Errorf("%s -> %q, %v; want %q", link, got, err, want)
		}
	}
	err := execute(root, []step{mount("none", "/nonexistent", "tmpfs", 0, "")}, func(string) {})
	if err == nil || !strings.HasPrefix(err.Error(), "mount -t tmpfs none /nonexistent: ") {
		t.Errorf("failing step: %v", err)
	}
}

// fakeSys makes a /sys/block and /dev with the given drives (name ->
// serial; "" for a disk without a serial attribute).
func fakeSys(t *testing.T, drives map[string]string) (sys, dev string) {
	t.Helper()
	dir := t.TempDir()
	sys, dev = filepath.Join(dir, "sys/block"), filepath.Join(dir, "dev")
	os.MkdirAll(dev, 0o755)
	for name, serial := range drives {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		if serial != "" {
			os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial+"\n"), 0o444)
		}
		os.WriteFile(filepath.Join(dev, name), nil, 0o600)
	}
	return sys, dev
}

func TestFindDrives(t *testing.T) {
	sys, dev := fakeSys(t, map[string]string{"vda": "rw", "vdb": "layer1", "vdc": "layer0", "loop0": "", "vdd": "layer2"})
	got, err := findDrives(sys, dev, wantedDrives(config()), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"rw": dev + "/vda", "layer1": dev + "/vdb", "layer0": dev + "/vdc", "layer2": dev + "/vdd"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("drives %v, want %v", got, want)
	}

	sys, dev = fakeSys(t, map[string]string{"vda": "layer0", "vdb": "rw"})
	_, err = findDrives(sys, dev, wantedDrives(config()), 0)
	wantErr := `no drive for layers[1] (serial "layer1"), layers[2] (serial "layer2"); drives present: ` + dev + "/vda=layer0, " + dev + "/vdb=rw"
	if err == nil || err.Error() != wantErr {
		t.Errorf("missing drives: %v\nwant %s", err, wantErr)
	}

	sys, dev = fakeSys(t, map[string]string{"vda": "layer0", "vdb": "layer0"})
	if _, err := findDrives(sys, dev, map[string]string{"layer0": "layers[0]"}, 0); err == nil || !strings.Contains(err.Error(), `both have serial "layer0"`) {
		t.Errorf("duplicate serials: %v", err)
	}

	// A drive whose node is not there yet is not found yet.
	sys, dev = fakeSys(t, map[string]string{"vda": "layer0"})
	os.Remove(filepath.Join(dev, "vda"))
	if _, err := findDrives(sys, dev, map[string]string{"layer0": "layers[0]"}, 0); err == nil || !strings.Contains(err.Error(), "drives present: none") {
		t.Errorf("drive without node: %v", err)
	}
}

func TestWriteEtc(t *testing.T) {
	root := t.TempDir()
	cfg := config()
	cfg.Hostname = "box"
	cfg.DNS = []string{"10.0.2.3", "fd00::3"}
	// An image whose resolv.conf points into /run, as systemd's do.
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	if err := writeEtc(root, cfg); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"hostname":    "box\n",
		"hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n",
		"resolv.conf": "nameserver 10.0.2.3\nnameserver fd00::3\n",
	} {
		p := filepath.Join(root, "etc", name)
		b, err := os.ReadFile(p)
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", name, b, err, want)
		}
		if st, _ := os.Lstat(p); !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", name, st.Mode())
		}
	}

	// The image's own hosts and resolv.conf stay when the config says
	// nothing; the hostname file follows the config.
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("image hosts\n"), 0o644)
	cfg.Hostname, cfg.DNS = "other", nil
	if err := writeEtc(root, cfg); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"hostname": "other\n", "hosts": "image hosts\n", "resolv.conf": "nameserver 10.0.2.3\nnameserver fd00::3\n"} {
		if b, _ := os.ReadFile(filepath.Join(root, "etc", name)); string(b) != want {
			t.Errorf("second boot: %s = %q, want %q", name, b, want)
		}
	}

	// A scratch image has no /etc at all.
	scratch := t.TempDir()
	cfg.Hostname = ""
	if err := writeEtc(scratch, cfg); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(scratch, "etc/hosts")); string(b) != defaultHosts("") {
		t.Errorf("scratch hosts: %q", b)
	}
	if _, err := os.Stat(filepath.Join(scratch, "etc/hostname")); err == nil {
		t.Error("hostname written without a hostname")
	}
	entries, _ := os.ReadDir(filepath.Join(root, "etc"))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestWorkloadEnv(t *testing.T) {
	cfg := config()
	cfg.Env = []string{"FOO=1"}
	cfg.Hostname = "box"
	cfg.Terminal = true
	id := ociuser.Identity{Home: "/home/app"}
	want := []string{"FOO=1", "PATH=" + defaultPath, "HOME=/home/app", "HOSTNAME=box", "TERM=xterm"}
	if got := workloadEnv(cfg, id); !reflect.DeepEqual(got, want) {
		t.Errorf("env %q, want %q", got, want)
	}
	// What the image or the user set stays.
	cfg.Env = []string{"PATH=/opt/bin", "HOME=/srv", "HOSTNAME=x", "TERM=vt100", "PATHX=1"}
	if got := workloadEnv(cfg, id); !reflect.DeepEqual(got, cfg.Env) {
		t.Errorf("env %q, want %q", got, cfg.Env)
	}
	cfg.Env, cfg.Hostname, cfg.Terminal = nil, "", false
	if got := workloadEnv(cfg, id); !reflect.DeepEqual(got, []string{"PATH=" + defaultPath, "HOME=/home/app"}) {
		t.Errorf("minimal env %q", got)
	}
}

// The register is written with one 4-byte store at the start of the page;
// a file stands in for /dev/mem.
func TestStatusRegister(t *testing.T) {
	if exitStatusAddr != devices.ExitStatusBase {
		t.Fatalf("the init writes %#x, Ember's register is at %#x", exitStatusAddr, devices.ExitStatusBase)
	}
	page := int64(os.Getpagesize())
	p := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(p, make([]byte, 2*page), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openStatusRegister(p, page)
	if err != nil {
		t.Fatal(err)
	}
	r.write(137)
	b, _ := os.ReadFile(p)
	if got := binary.LittleEndian.Uint32(b[page:]); got != 137 {
		t.Errorf("register holds %d, want 137", got)
	}
	for i, c := range b {
		if c != 0 && (int64(i) < page || int64(i) >= page+4) {
			t.Fatalf("byte %d written", i)
		}
	}
	if _, err := openStatusRegister(filepath.Join(t.TempDir(), "none"), 0); err == nil {
		t.Error("missing device: no error")
	}
}

func TestConsoleDevice(t *testing.T) {
	for active, want := range map[string]string{
		"ttyS0\n":      "/dev/ttyS0",
		"tty0 ttyS0\n": "/dev/ttyS0",
		"ttyS0 hvc0":   "/dev/hvc0",
		"":             "/dev/console",
		"../x\n":       "/dev/console",
		"a/b":          "/dev/console",
	} {
		if got := consoleDevice(active, "/dev"); got != want {
			t.Errorf("consoleDevice(%q) = %q, want %q", active, got, want)
		}
	}
}

func TestReadConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := readConfig(filepath.Join(dir, "config.json")); err == nil || !strings.Contains(err.Error(), "appends it to the initrd") {
		t.Errorf("missing config: %v", err)
	}
	good, _ := config().Marshal()
	p := filepath.Join(dir, "good.json")
	os.WriteFile(p, good, 0o600)
	if cfg, err := readConfig(p); err != nil || !reflect.DeepEqual(cfg, config()) {
		t.Errorf("readConfig: %+v, %v", cfg, err)
	}
	os.WriteFile(p, []byte(`{"version":1,"mode":"run","args":[""]}`), 0o600)
	if _, err := readConfig(p); err == nil || err.Error() != "config: args[0]: empty command" {
		t.Errorf("bad config: %v", err)
	}
}

// The agent's base environment is the image's with HOSTNAME; PATH and
// HOME are the agent's to complete per process.
func TestAgentEnv(t *testing.T) {
	cfg := config()
	cfg.Mode, cfg.Hostname, cfg.Env = initconfig.ModeAgent, "box", []string{"A=1"}
	if got := agentEnv(cfg); !slices.Equal(got, []string{"A=1", "HOSTNAME=box"}) {
		t.Errorf("env %q", got)
	}
	cfg.Env = []string{"HOSTNAME=mine"}
	if got := agentEnv(cfg); !slices.Equal(got, []string{"HOSTNAME=mine"}) {
		t.Errorf("env %q", got)
	}
}
