package jail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths and files of the cgroup filesystems (Documentation/admin-guide/
// cgroup-v1 and cgroup-v2.rst in the kernel tree, proc(5)).
const (
	mountInfoPath     = "/proc/self/mountinfo"
	fsCgroup1         = "cgroup"
	fsCgroup2         = "cgroup2"
	procsFile         = "cgroup.procs"           // v1 and v2: writing a PID (0: the writer) moves its whole process
	tasksFile         = "tasks"                  // v1: writing a TID (0: the writer) moves that one thread
	controllersFile   = "cgroup.controllers"     // v2: controllers a group can pass to its children
	subtreeFile       = "cgroup.subtree_control" // v2: controllers a group passes to its children
	killFile          = "cgroup.kill"            // v2 (Linux 5.14): writing 1 kills every member
	memoryEventsFile  = "memory.events"          // v2: "oom_kill N" counts OOM kills in the group
	memoryOOMFile     = "memory.oom_control"     // v1: the same count, on the same key
	oomKillKey        = "oom_kill"
	cpusetCPUs        = "cpuset.cpus"
	cpusetMems        = "cpuset.mems"
	coreController    = "cgroup" // "cgroup.*" files belong to no controller
	cpusetController  = "cpuset"
	cgroupRmdirTries  = 100                   // how often removal retries a group that is still busy
	cgroupRmdirPause  = 10 * time.Millisecond // between tries: a dying process leaves its group within milliseconds
	cgroupDirMode     = 0o755
	cgroupValueSuffix = "\n"
)

// reservedCgroupFiles are the files through which the jailer places the
// process itself; a --cgroup value for them would undo or fight that.
var reservedCgroupFiles = []string{procsFile, "cgroup.threads", killFile, subtreeFile}

// cgroupPlan is what the jailer will do in cgroupfs: one group per
// hierarchy (a single one on cgroup v2; one per controller mount on v1),
// each <hierarchy root>/<parent>/<id> with its values; or, on v2 with
// no values, only joining an existing parent group (Firecracker's rule).
type cgroupPlan struct {
	Version  int
	Groups   []cgroupGroup
	JoinOnly string `json:",omitempty"`
	// Forked says the process was made in its group (clone3's
	// CLONE_INTO_CGROUP, cgroup v2) and has nothing to join.
	Forked bool `json:",omitempty"`
}

// cgroupGroup is the VM's group in one hierarchy.
type cgroupGroup struct {
	Mount  string   // the hierarchy's mount point
	Parent string   // --parent-cgroup, relative to Mount
	Dir    string   // Mount/Parent/<id>
	Enable []string // v2: controllers to enable on the way down from Mount
	Cpuset bool     // v1 cpuset hierarchy: new groups inherit cpus and mems
	Props  []cgroupProp
}

// cgroupProp is one --cgroup FILE=VALUE.
type cgroupProp struct{ File, Value string }

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Point  string
	FSType string
	Super  []string // super options: the controllers of a v1 cgroup mount
}

// readMounts parses mountinfo (proc(5): "ID PARENT MAJ:MIN ROOT POINT
// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS").
func readMounts(path string) ([]mountEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := slices.Index(f, "-")
		if sep < 5 || sep+3 >= len(f) {
			continue
		}
		out = append(out, mountEntry{Point: unescapeMount(f[4]), FSType: f[sep+1], Super: strings.Split(f[sep+3], ",")})
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// planCgroups works out the cgroup plan from the flags and the host's
// mounts, checking that every controller named is there.
func planCgroups(o Options, execName, mountinfo string) (*cgroupPlan, error) {
	if o.CgroupVersion != 1 && o.CgroupVersion != 2 {
		return nil, fmt.Errorf("--cgroup-version %d: want 1 or 2", o.CgroupVersion)
	}
	parent := o.ParentCgroup
	if parent == "" {
		parent = execName
	}
	if err := checkParentCgroup(parent); err != nil {
		return nil, err
	}
	props, err := parseCgroupProps(o.Cgroups)
	if err != nil {
		return nil, err
	}
	if len(props) == 0 && (o.CgroupVersion == 1 || o.ParentCgroup == "") {
		return nil, nil
	}
	mounts, err := readMounts(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	plan := &cgroupPlan{Version: o.CgroupVersion}
	if o.CgroupVersion == 2 {
		mnt, ok := cgroup2Mount(mounts)
		if !ok {
			return nil, fmt.Errorf("--cgroup-version 2: this host has no cgroup v2 hierarchy mounted%s", v1Hint(mounts, props))
		}
		if len(props) == 0 {
			dir := filepath.Join(mnt, parent)
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return nil, fmt.Errorf("--parent-cgroup %s: no such cgroup at %s (with no --cgroup values the jailer only joins an existing group)", parent, dir)
			}
			plan.JoinOnly = dir
			return plan, nil
		}
		g := cgroupGroup{Mount: mnt, Parent: parent, Dir: filepath.Join(mnt, parent, o.ID), Props: props}
		avail, _ := os.ReadFile(filepath.Join(mnt, controllersFile))
		for _, p := range props {
			c := controllerOf(p.File)
			if c == coreController || slices.Contains(g.Enable, c) {
				continue
			}
			if !slices.Contains(strings.Fields(string(avail)), c) {
				hint := ""
				if _, ok := v1Mount(mounts, c); ok {
					hint = ": the host has it on a cgroup v1 hierarchy; pass --cgroup-version 1"
				}
				return nil, fmt.Errorf("--cgroup %s=%s: cgroup v2 at %s has no %s controller (it offers: %s)%s",
					p.File, p.Value, mnt, c, strings.Join(strings.Fields(string(avail)), " "), hint)
			}
			g.Enable = append(g.Enable, c)
		}
		plan.Groups = []cgroupGroup{g}
		return plan, nil
	}
	for _, p := range props {
		c := controllerOf(p.File)
		if c == coreController {
			return nil, fmt.Errorf("--cgroup %s=%s: on cgroup v1 a cgroup.* file belongs to no one hierarchy; name a controller's file", p.File, p.Value)
		}
		mnt, ok := v1Mount(mounts, c)
		if !ok {
			hint := ""
			if m, ok := cgroup2Mount(mounts); ok && v2Offers(m, c) {
				hint = ": the host has it on cgroup v2; pass --cgroup-version 2"
			}
			return nil, fmt.Errorf("--cgroup %s=%s: no cgroup v1 hierarchy has the %s controller mounted%s", p.File, p.Value, c, hint)
		}
		i := slices.IndexFunc(plan.Groups, func(g cgroupGroup) bool { return g.Mount == mnt })
		if i < 0 {
			plan.Groups = append(plan.Groups, cgroupGroup{Mount: mnt, Parent: parent, Dir: filepath.Join(mnt, parent, o.ID),
				Cpuset: slices.Contains(mountControllers(mounts, mnt), cpusetController)})
			i = len(plan.Groups) - 1
		}
		plan.Groups[i].Props = append(plan.Groups[i].Props, p)
	}
	return plan, nil
}

// checkParentCgroup applies Firecracker's rule: a relative path with no
// "." or ".." components.
func checkParentCgroup(parent string) error {
	if filepath.IsAbs(parent) {
		return fmt.Errorf("--parent-cgroup %s: want a path relative to the cgroup hierarchy's root", parent)
	}
	for _, c := range strings.Split(parent, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("--parent-cgroup %s: want a plain relative path, without empty, '.' or '..' parts", parent)
		}
	}
	return nil
}

// parseCgroupProps reads --cgroup FILE=VALUE flags. FILE is a cgroup
// interface file, <controller>.<name>; VALUE is written as it is (it may
// hold '=' and spaces, as io.max does).
func parseCgroupProps(flags []string) ([]cgroupProp, error) {
	var props []cgroupProp
	for _, f := range flags {
		file, value, ok := strings.Cut(f, "=")
		switch {
		case !ok || value == "":
			return nil, fmt.Errorf("--cgroup %q: want FILE=VALUE, such as memory.max=256M", f)
		case !validCgroupFile(file):
			return nil, fmt.Errorf("--cgroup %q: %q is not a cgroup file name (<controller>.<name>, such as cpu.max)", f, file)
		case slices.Contains(reservedCgroupFiles, file):
			return nil, fmt.Errorf("--cgroup %q: the jailer manages %s itself", f, file)
		case strings.ContainsAny(value, "\n\x00"):
			return nil, fmt.Errorf("--cgroup %q: the value holds a newline or NUL", f)
		}
		props = append(props, cgroupProp{File: file, Value: value})
	}
	return props, nil
}

// validCgroupFile accepts <controller>.<name>: letters, digits and '_'
// parts joined by single dots (hugetlb.2MB.max has three).
func validCgroupFile(name string) bool {
	parts := strings.Split(name, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return false
			}
		}
	}
	return true
}

func controllerOf(file string) string { c, _, _ := strings.Cut(file, "."); return c }

func cgroup2Mount(mounts []mountEntry) (string, bool) {
	for _, m := range mounts {
		if m.FSType == fsCgroup2 {
			return m.Point, true
		}
	}
	return "", false
}

func v1Mount(mounts []mountEntry, controller string) (string, bool) {
	for _, m := range mounts {
		if m.FSType == fsCgroup1 && slices.Contains(m.Super, controller) {
			return m.Point, true
		}
	}
	return "", false
}

func mountControllers(mounts []mountEntry, point string) []string {
	for _, m := range mounts {
		if m.Point == point {
			return m.Super
		}
	}
	return nil
}

func v2Offers(mount, controller string) bool {
	avail, err := os.ReadFile(filepath.Join(mount, controllersFile))
	return err == nil && slices.Contains(strings.Fields(string(avail)), controller)
}

// v1Hint suggests version 1 when the controllers asked for are there.
func v1Hint(mounts []mountEntry, props []cgroupProp) string {
	for _, p := range props {
		if _, ok := v1Mount(mounts, controllerOf(p.File)); ok {
			return ": the host mounts its controllers as cgroup v1; pass --cgroup-version 1"
		}
	}
	return ""
}

// groupDirs are the groups the plan makes, which the jail's removal
// removes; joinDirs are those the process is placed in.
func (c *cgroupPlan) groupDirs() []string {
	if c == nil {
		return nil
	}
	var dirs []string
	for _, g := range c.Groups {
		dirs = append(dirs, g.Dir)
	}
	return dirs
}

func (c *cgroupPlan) joinDirs() []string {
	if c == nil {
		return nil
	}
	if c.JoinOnly != "" {
		return []string{c.JoinOnly}
	}
	return c.groupDirs()
}

// create makes each group and writes its values, adding what it makes to
// *made so that a failure can be undone.
func (c *cgroupPlan) create(made *[]string) error {
	if c == nil {
		return nil
	}
	for _, g := range c.Groups {
		if err := g.create(c.Version, made); err != nil {
			return err
		}
	}
	return nil
}

func (g cgroupGroup) create(version int, made *[]string) error {
	dir := g.Mount
	levels := append([]string{""}, strings.Split(g.Parent, "/")...)
	for i, name := range levels {
		if i > 0 {
			parent := dir
			dir = filepath.Join(dir, name)
			created, err := mkdirNew(dir, cgroupDirMode)
			if err != nil {
				return fmt.Errorf("cgroup %s: %w", dir, err)
			}
			if created {
				*made = append(*made, dir)
				if g.Cpuset {
					if err := inheritCpuset(parent, dir); err != nil {
						return err
					}
				}
			}
		}
		if version == 2 {
			if err := enableControllers(dir, g.Enable); err != nil {
				return err
			}
		}
	}
	if err := os.Mkdir(g.Dir, cgroupDirMode); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s already exists: is another VM running with this --id?", g.Dir)
		}
		return fmt.Errorf("cgroup %s: %w", g.Dir, unwrapPath(err))
	}
	*made = append(*made, g.Dir)
	if g.Cpuset {
		if err := inheritCpuset(dir, g.Dir); err != nil {
			return err
		}
	}
	for _, p := range g.Props {
		if err := writeCgroupFile(g.Dir, p.File, p.Value); err != nil {
			return fmt.Errorf("--cgroup %s=%s: %w", p.File, p.Value, err)
		}
	}
	return nil
}

// enableControllers turns controllers on in dir's cgroup.subtree_control, so
// its children get their files (cgroup v2 passes controllers down one level
// at a time).
func enableControllers(dir string, controllers []string) error {
	if len(controllers) == 0 {
		return nil
	}
	on, err := os.ReadFile(filepath.Join(dir, subtreeFile))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, unwrapPath(err))
	}
	for _, c := range controllers {
		if slices.Contains(strings.Fields(string(on)), c) {
			continue
		}
		if err := writeCgroupFile(dir, subtreeFile, "+"+c); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("cgroup %s: cannot pass the %s controller down: the group holds processes of its own (cgroup v2's no-internal-processes rule)", dir, c)
			}
			return fmt.Errorf("cgroup %s: enable the %s controller: %w", dir, c, err)
		}
	}
	return nil
}

// inheritCpuset copies cpuset.cpus and cpuset.mems from parent into a new
// v1 group, where they start empty and would refuse any process.
func inheritCpuset(parent, dir string) error {
	for _, f := range []string{cpusetCPUs, cpusetMems} {
		v, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, unwrapPath(err))
		}
		if strings.TrimSpace(string(v)) != "" {
			continue
		}
		pv, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", parent, unwrapPath(err))
		}
		if err := writeCgroupFile(dir, f, strings.TrimSpace(string(pv))); err != nil {
			return fmt.Errorf("cgroup %s: inherit %s: %w", dir, f, err)
		}
	}
	return nil
}

// writeCgroupFile writes one value, saying in words why the kernel refused.
func writeCgroupFile(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cgroup %s has no file %s (is the name right, and its controller enabled there?)", dir, file)
		}
		return unwrapPath(err)
	}
	defer f.Close()
	if _, err := f.WriteString(value + cgroupValueSuffix); err != nil {
		err = unwrapPath(err)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ERANGE) {
			return fmt.Errorf("the kernel refused the value for %s: %w", file, err)
		}
		return fmt.Errorf("write %s/%s: %w", dir, file, err)
	}
	return nil
}

// openJoin opens, in each group the process joins, the file through which
// the thread that will exec places itself there: opened now, written after
// pivot_root has hidden cgroupfs. Moving a whole process (cgroup.procs)
// takes the kernel's cgroup_threadgroup_rwsem for writing, which waits for
// an RCU grace period (10-15 ms on these hosts) unless the hierarchy is
// mounted with favordynmods. On v1 only the thread that will exec moves
// (writing 0 to tasks), which needs no such lock: exec makes that thread
// the whole process and ends the others. v2 moves processes only; the
// jailer's child is made in its group instead, when there is one
// (joinFD).
func (c *cgroupPlan) openJoin() ([]*os.File, error) {
	if c == nil || c.Forked {
		return nil, nil
	}
	file := procsFile
	if c.Version == 1 {
		file = tasksFile
	}
	var files []*os.File
	for _, d := range c.joinDirs() {
		f, err := os.OpenFile(filepath.Join(d, file), os.O_WRONLY, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("cgroup %s: %w", d, unwrapPath(err))
		}
		files = append(files, f)
	}
	return files, nil
}

// joinFD opens the group a child is to be made in (v2: one group), or
// returns nil.
func (c *cgroupPlan) joinFD() (*os.File, error) {
	if c == nil || c.Version != 2 {
		return nil, nil
	}
	dirs := c.joinDirs()
	f, err := os.Open(dirs[0])
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", dirs[0], unwrapPath(err))
	}
	return f, nil
}

// join places the calling thread (v1) or process (v2) in each group:
// writing 0 names the writer.
func join(files []*os.File) error {
	defer closeAll(files)
	for _, f := range files {
		if _, err := f.WriteString("0" + cgroupValueSuffix); err != nil {
			return fmt.Errorf("join cgroup %s: %w", filepath.Dir(f.Name()), unwrapPath(err))
		}
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// oomKills returns how many processes the kernel's OOM killer killed in the
// group for reaching its memory limit.
func oomKills(dir string) uint64 {
	for _, file := range []string{memoryEventsFile, memoryOOMFile} {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && k == oomKillKey {
				n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				return n
			}
		}
	}
	return 0
}

// populated reports whether processes remain in the group.
func populated(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, procsFile))
	return err == nil && len(bytes.TrimSpace(data)) > 0
}

// removeCgroup removes a VM's group. Whatever is still in it once the VM
// has ended is something the VM left behind, and is killed first.
func removeCgroup(dir string) error {
	for try := 0; ; try++ {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || try == cgroupRmdirTries {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		killMembers(dir)
		time.Sleep(cgroupRmdirPause)
	}
}

func killMembers(dir string) {
	if writeCgroupFile(dir, killFile, "1") == nil {
		return
	}
	data, _ := os.ReadFile(filepath.Join(dir, procsFile))
	for _, s := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(s); err == nil && pid > 0 {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// HostCgroups returns the cgroup version on which this host offers every
// controller named, and the mount points of the hierarchies that hold them:
// version 2 when its v2 hierarchy has them all, else 1 when v1 hierarchies
// do, else 0. (A host mounts each controller on one version only.)
func HostCgroups(controllers ...string) (version int, hierarchies []string) {
	mounts, err := readMounts(mountInfoPath)
	if err != nil {
		return 0, nil
	}
	if m, ok := cgroup2Mount(mounts); ok && !slices.ContainsFunc(controllers, func(c string) bool { return !v2Offers(m, c) }) {
		return 2, []string{m}
	}
	for _, c := range controllers {
		m, ok := v1Mount(mounts, c)
		if !ok {
			return 0, nil
		}
		if !slices.Contains(hierarchies, m) {
			hierarchies = append(hierarchies, m)
		}
	}
	return 1, hierarchies
}
