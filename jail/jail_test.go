package jail

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheckInstanceID(t *testing.T) {
	for id, ok := range map[string]bool{
		"a": true, "vm-1": true, "A-Z-0-9": true, strings.Repeat("x", maxIDLen): true,
		"": false, "a b": false, "a_b": false, "a/b": false, "..": false, "é": false, strings.Repeat("x", maxIDLen+1): false,
	} {
		if err := CheckInstanceID(id); (err == nil) != ok {
			t.Errorf("CheckInstanceID(%q) = %v, want ok %v", id, err, ok)
		}
	}
}

func TestParseCgroupProps(t *testing.T) {
	got, err := parseCgroupProps([]string{"memory.max=256M", "io.max=8:0 rbps=1048576", "hugetlb.2MB.max=0", "cpu.max=max 100000"})
	if err != nil {
		t.Fatal(err)
	}
	want := []cgroupProp{{"memory.max", "256M"}, {"io.max", "8:0 rbps=1048576"}, {"hugetlb.2MB.max", "0"}, {"cpu.max", "max 100000"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"memory.max", "memory.max=", "=1", "memory=1", ".max=1", "memory..max=1",
		"../memory.max=1", "memory/x.max=1", "cgroup.procs=1", "cgroup.kill=1", "memory.max=1\n2"} {
		if _, err := parseCgroupProps([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseLimits(t *testing.T) {
	p := &plan{NoFile: defaultNoFile}
	if err := parseLimits(p, []string{"fsize=1048576", "no-file=1024"}); err != nil {
		t.Fatal(err)
	}
	if p.NoFile != 1024 || p.FSize == nil || *p.FSize != 1048576 {
		t.Errorf("no-file %d, fsize %v", p.NoFile, p.FSize)
	}
	for _, bad := range []string{"fsize", "fsize=-1", "fsize=1k", "nofile=10", "no-file=1", "no-file=18446744073709551615"} {
		if err := parseLimits(&plan{}, []string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReadMounts(t *testing.T) {
	info := `22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 27 0:40 / /srv/with\040space rw - tmpfs tmpfs rw
`
	path := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(path, []byte(info), 0o644)
	m, err := readMounts(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 5 || m[1].Point != "/sys/fs/cgroup/cpu,cpuacct" || m[3].FSType != fsCgroup2 || m[4].Point != "/srv/with space" {
		t.Fatalf("parsed %+v", m)
	}
	if p, ok := v1Mount(m, "cpuacct"); !ok || p != "/sys/fs/cgroup/cpu,cpuacct" {
		t.Errorf("cpuacct at %q", p)
	}
	if _, ok := v1Mount(m, "pids"); ok {
		t.Error("found a pids hierarchy")
	}
}

// fakeHost is a mountinfo naming temporary directories as the cgroup
// hierarchies: enough for planning, which only reads.
func fakeHost(t *testing.T, v2Controllers string) (mountinfo, cpu, mem, unified string) {
	t.Helper()
	dir := t.TempDir()
	cpu, mem, unified = filepath.Join(dir, "cpu,cpuacct"), filepath.Join(dir, "memory"), filepath.Join(dir, "unified")
	for _, d := range []string{cpu, mem, unified} {
		os.Mkdir(d, 0o755)
	}
	os.WriteFile(filepath.Join(unified, controllersFile), []byte(v2Controllers+"\n"), 0o644)
	mountinfo = filepath.Join(dir, "mountinfo")
	os.WriteFile(mountinfo, []byte(strings.Join([]string{
		"32 31 0:29 / " + cpu + " rw - cgroup cgroup rw,cpu,cpuacct",
		"35 31 0:32 / " + mem + " rw - cgroup cgroup rw,memory",
		"41 31 0:38 / " + unified + " rw - cgroup2 cgroup2 rw",
	}, "\n")), 0o644)
	return mountinfo, cpu, mem, unified
}

func TestPlanCgroupsV1(t *testing.T) {
	mi, cpu, mem, _ := fakeHost(t, "pids")
	o := Options{ID: "vm1", CgroupVersion: 1, Cgroups: []string{"cpu.shares=10", "memory.limit_in_bytes=1M", "cpuacct.x=1"}}
	p, err := planCgroups(o, "ember", mi)
	if err != nil {
		t.Fatal(err)
	}
	want := &cgroupPlan{Version: 1, Groups: []cgroupGroup{
		{Mount: cpu, Parent: "ember", Dir: filepath.Join(cpu, "ember", "vm1"), Props: []cgroupProp{{"cpu.shares", "10"}, {"cpuacct.x", "1"}}},
		{Mount: mem, Parent: "ember", Dir: filepath.Join(mem, "ember", "vm1"), Props: []cgroupProp{{"memory.limit_in_bytes", "1M"}}},
	}}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("plan %+v\nwant %+v", p, want)
	}
	// A controller only v2 has: the error says to use v2.
	o.Cgroups = []string{"pids.max=10"}
	if _, err := planCgroups(o, "ember", mi); err == nil || !strings.Contains(err.Error(), "--cgroup-version 2") {
		t.Errorf("pids on v1: %v", err)
	}
	// No values: nothing to do on v1, even with a parent.
	o.Cgroups, o.ParentCgroup = nil, "fleet"
	if p, err := planCgroups(o, "ember", mi); p != nil || err != nil {
		t.Errorf("no values: %+v, %v", p, err)
	}
}

func TestPlanCgroupsV2(t *testing.T) {
	mi, _, _, unified := fakeHost(t, "cpu pids")
	o := Options{ID: "vm1", CgroupVersion: 2, ParentCgroup: "fleet/a", Cgroups: []string{"pids.max=10", "cgroup.max.depth=1", "cpu.max=max", "pids.max=20"}}
	p, err := planCgroups(o, "ember", mi)
	if err != nil {
		t.Fatal(err)
	}
	g := p.Groups[0]
	if len(p.Groups) != 1 || g.Dir != filepath.Join(unified, "fleet/a/vm1") || !reflect.DeepEqual(g.Enable, []string{"pids", "cpu"}) || len(g.Props) != 4 {
		t.Errorf("plan %+v", p)
	}
	// memory is on v1 here: the error says so.
	o.Cgroups = []string{"memory.max=1M"}
	if _, err := planCgroups(o, "ember", mi); err == nil || !strings.Contains(err.Error(), "--cgroup-version 1") {
		t.Errorf("memory on v2: %v", err)
	}
	// No values and a parent: join the parent, which must exist.
	o.Cgroups = nil
	if _, err := planCgroups(o, "ember", mi); err == nil || !strings.Contains(err.Error(), "no such cgroup") {
		t.Errorf("missing parent: %v", err)
	}
	os.MkdirAll(filepath.Join(unified, "fleet/a"), 0o755)
	if p, err := planCgroups(o, "ember", mi); err != nil || p.JoinOnly != filepath.Join(unified, "fleet/a") || len(p.groupDirs()) != 0 {
		t.Errorf("join only: %+v, %v", p, err)
	}
	for _, parent := range []string{"/abs", "a/../b", "./a", "a//b", "a/"} {
		o.ParentCgroup = parent
		if _, err := planCgroups(o, "ember", mi); err == nil {
			t.Errorf("--parent-cgroup %q accepted", parent)
		}
	}
}

// TestRemoveTreeKeepsMounts: removal never follows a mount out of a jail.
func TestRemoveTreeKeepsMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "jail")
	inside := filepath.Join(dir, "root", "drive")
	os.MkdirAll(inside, 0o755)
	if err := unix.Mount("tmpfs", inside, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(inside, unix.MNT_DETACH)
	precious := filepath.Join(inside, "data")
	os.WriteFile(precious, []byte("keep"), 0o644)
	if err := removeTree(dir); err == nil || !strings.Contains(err.Error(), "mount point") {
		t.Errorf("removeTree: %v", err)
	}
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("the mounted file is gone: %v", err)
	}
	unix.Unmount(inside, unix.MNT_DETACH)
	if err := removeTree(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("jail still there: %v", err)
	}
}

func TestCheckExecFile(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(script, link)
	for name, want := range map[string]string{
		"":                 "required",
		"/nonexistent/vmm": "no such file",
		dir:                "not a regular file",
		script:             "not an ELF",
		link:               "not an ELF",
	} {
		if _, err := checkExecFile(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkExecFile(%q) = %v, want %q", name, err, want)
		}
	}
}

func TestWritableBy(t *testing.T) {
	f := filepath.Join(t.TempDir(), "vmm")
	os.WriteFile(f, nil, 0o755)
	st, _ := os.Stat(f)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	if writableBy(st, uid+1, gid+1) {
		t.Error("a 0755 file of another user counts as writable")
	}
	if !writableBy(st, uid, gid+1) {
		t.Error("the owner of a 0755 file cannot write it?")
	}
	os.Chmod(f, 0o757)
	st, _ = os.Stat(f)
	if !writableBy(st, uid+1, gid+1) {
		t.Error("a world-writable file counts as safe")
	}
}

// FuzzParseCgroupProps: whatever --cgroup is given, an accepted FILE names a
// file in the VM's own group (no path, no "..") and VALUE is one line.
func FuzzParseCgroupProps(f *testing.F) {
	for _, s := range []string{"memory.max=256M", "io.max=8:0 rbps=1048576", "hugetlb.2MB.max=0", "../x.y=1", "cgroup.procs=0", "a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		props, err := parseCgroupProps([]string{s})
		if err != nil {
			return
		}
		p := props[0]
		if filepath.Base(p.File) != p.File || strings.Contains(p.File, "..") || !strings.Contains(p.File, ".") ||
			p.Value == "" || strings.ContainsAny(p.Value, "\n\x00") {
			t.Fatalf("accepted %q as %+v", s, p)
		}
	})
}

// FuzzUnescapeMount: mountinfo's escapes never panic the parser.
func FuzzUnescapeMount(f *testing.F) {
	for _, s := range []string{`/srv/with\040space`, `\`, `\0`, `\04`, `\777`, `a\134b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if u := unescapeMount(s); len(u) > len(s) {
			t.Fatalf("%q unescaped to the longer %q", s, u)
		}
	})
}
