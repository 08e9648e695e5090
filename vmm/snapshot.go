package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/devices"
	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/snapshot"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/x86"
)

// EmberVersion is written into snapshot headers; cmd/ember sets it.
var EmberVersion = "dev"

// Snapshot types (Firecracker's snapshot_type).
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// Errors of the snapshot operations.
var (
	// ErrNotPaused: a snapshot is taken of a paused VM only.
	ErrNotPaused = errors.New("the microVM must be paused to create a snapshot")
	// ErrBadSnapshot: the snapshot cannot be loaded (bad or corrupt files,
	// another CPU vendor, ...). A process whose load failed must exit.
	ErrBadSnapshot = errors.New("cannot load the snapshot")
)

// SnapshotCreate is PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotPath string
	MemFilePath  string
	Type         string // SnapshotFull (default) or SnapshotDiff
}

// SnapshotLoad is PUT /snapshot/load.
type SnapshotLoad struct {
	SnapshotPath string
	// MemFilePath is the memory file to map (the File backend), unless
	// UffdPath is set.
	MemFilePath string
	// UffdPath, for the Uffd backend, is the page-fault handler's socket:
	// guest RAM is anonymous memory whose faults that handler serves.
	UffdPath        string
	TrackDirtyPages bool
	// ResumeVM resumes the VM once loaded (the Controller's part).
	ResumeVM      bool
	ClockRealtime bool
	// NetOverrides maps an interface id to the tap to attach it to instead
	// of the snapshotted one.
	NetOverrides map[string]string
	// VsockUDSPath, if set, replaces the vsock device's uds_path.
	VsockUDSPath string
	// DriveOverrides (an Ember extension) maps a drive id to a new file
	// for it. For a raw drive it is the file to use instead of the
	// snapshotted one (a copy the caller made). For a copy-on-write drive
	// it is a new overlay, which must not exist: LoadSnapshot makes it,
	// empty, over the snapshot's overlay (in constant time), so that each
	// clone writes its own overlay and the snapshot's stays as it was.
	DriveOverrides map[string]string
}

// Device section names in the state file.
const (
	sectionConfig = "config"
	sectionSerial = "serial"
	sectionI8042  = "i8042"
)

// savedConfig is the part of Config a restore rebuilds the machine from
// (the kernel is not needed: it is in guest memory).
type savedConfig struct {
	KernelPath      string          `json:"kernel_path,omitempty"` // for information
	Cmdline         string          `json:"cmdline,omitempty"`     // for information
	VCPUs           int             `json:"vcpu_count"`
	MemMiB          int             `json:"mem_size_mib"`
	SMT             bool            `json:"smt,omitempty"`
	PIT             bool            `json:"pit,omitempty"`
	BootTimer       bool            `json:"boot_timer,omitempty"`
	HugePages       string          `json:"huge_pages,omitempty"`
	NoVirtioCmdline bool            `json:"no_virtio_cmdline,omitempty"`
	Drives          []DriveConfig   `json:"drives,omitempty"`
	Nets            []vnet.Config   `json:"network_interfaces,omitempty"`
	Vsock           *vsock.Config   `json:"vsock,omitempty"`
	Balloon         *balloon.Config `json:"balloon,omitempty"`
	RNG             *rng.Config     `json:"entropy,omitempty"`
	// MMDS is the MMDS configuration (Firecracker saves it too); the data
	// store is not saved: a clone's owner PUTs the clone's own after the
	// load.
	MMDS *mmds.Config `json:"mmds_config,omitempty"`
	// DriveOverlays has the Identity of each copy-on-write drive's overlay
	// when the snapshot was taken (disk.COW.Mark): a load refuses an
	// overlay written since, whose data no longer matches the snapshot's
	// memory.
	DriveOverlays map[string]disk.Identity `json:"drive_overlays,omitempty"`
}

func saveConfig(c *Config) savedConfig {
	c2 := c.clone()
	return savedConfig{KernelPath: c2.KernelPath, Cmdline: c2.Cmdline, VCPUs: c2.VCPUs, MemMiB: c2.MemMiB,
		SMT: c2.SMT, PIT: c2.PIT, BootTimer: c2.BootTimer, HugePages: c2.HugePages,
		NoVirtioCmdline: c2.NoVirtioCmdline, Drives: c2.Drives, Nets: c2.Nets, Vsock: c2.Vsock,
		Balloon: c2.Balloon, RNG: c2.RNG, MMDS: c2.MMDS}
}

// apply fills c's machine fields from the snapshot's.
func (s savedConfig) apply(c *Config) {
	c.KernelPath, c.Cmdline, c.VCPUs, c.MemMiB = s.KernelPath, s.Cmdline, s.VCPUs, s.MemMiB
	c.SMT, c.PIT, c.BootTimer, c.HugePages, c.NoVirtioCmdline = s.SMT, s.PIT, s.BootTimer, s.HugePages, s.NoVirtioCmdline
	c.Drives, c.Nets, c.Vsock, c.Balloon, c.RNG = s.Drives, s.Nets, s.Vsock, s.Balloon, s.RNG
	c.MMDS = s.MMDS
}

// recordOverlays returns the identity of each copy-on-write drive's
// overlay, for the snapshot (blk.Device.MarkOverlay: any later write to it
// shows). The VM must be paused. It opens no file, so the running VM's
// seccomp filter allows it.
func (v *VM) recordOverlays() (map[string]disk.Identity, error) {
	var out map[string]disk.Identity
	for id, d := range v.drives {
		ident, ok, err := d.MarkOverlay()
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if out == nil {
			out = map[string]disk.Identity{}
		}
		out[id] = ident
	}
	return out, nil
}

// overrideDrives checks the snapshot's overlays and applies p's drive
// overrides to cfg: a raw drive takes its new file, a copy-on-write drive
// a new overlay over the snapshot's, made here. It returns the overlays it
// made, for the caller to remove if the load fails.
func overrideDrives(cfg *Config, sc savedConfig, p SnapshotLoad) (made []string, err error) {
	defer func() {
		if err != nil {
			for _, f := range made {
				os.Remove(f)
			}
			made = nil
		}
	}()
	for id := range p.DriveOverrides {
		if !slices.ContainsFunc(cfg.Drives, func(d DriveConfig) bool { return d.ID == id }) {
			return nil, fmt.Errorf("ember_drive_overrides: the snapshot has no drive %q", id)
		}
	}
	for i := range cfg.Drives {
		dc := &cfg.Drives[i]
		if want, ok := sc.DriveOverlays[dc.ID]; ok {
			got, err := disk.OverlayIdentity(dc.Path)
			if err != nil {
				return made, fmt.Errorf("drive %s: overlay: %w", dc.ID, err)
			}
			if got != want {
				return made, fmt.Errorf("drive %s: overlay %s was written after the snapshot was taken, so its data no longer matches the snapshot's memory: "+
					"give each load its own new overlay (ember_drive_overrides) and leave the snapshot's alone", dc.ID, dc.Path)
			}
		}
		path, ok := p.DriveOverrides[dc.ID]
		if !ok {
			continue
		}
		if dc.BasePath == "" {
			dc.Path = path
			continue
		}
		if err := disk.CreateOverlay(path, dc.Path, disk.CreateOptions{BaseIsOverlay: true}); err != nil {
			return made, fmt.Errorf("drive %s: new overlay: %w", dc.ID, err)
		}
		made = append(made, path)
		dc.BasePath, dc.Path = dc.Path, path
	}
	return made, nil
}

// deviceInfos lists the devices for the snapshot header.
func (v *VM) deviceInfos() []snapshot.DeviceInfo {
	out := []snapshot.DeviceInfo{{Name: sectionSerial, Kind: "serial"}, {Name: sectionI8042, Kind: "i8042"}}
	if v.bootTimer != nil {
		out = append(out, snapshot.DeviceInfo{Name: "boot-timer", Kind: "boot-timer"})
	}
	if v.vmgenid != nil {
		out = append(out, snapshot.DeviceInfo{Name: sectionVMGenID, Kind: "vmgenid"})
	}
	for _, d := range v.virtio {
		info := snapshot.DeviceInfo{Name: d.name}
		switch dev := d.transport.Device().(type) {
		case *balloon.Device:
			info.Kind = "virtio-balloon"
		case *vsock.Device:
			info.Kind, info.Backend = "virtio-vsock", v.cfg.Vsock.UDSPath
		case *rng.Device:
			info.Kind = "virtio-rng"
		case *vnet.Device:
			info.Kind = "virtio-net"
			for id, n := range v.nets {
				if n == dev {
					for _, nc := range v.cfg.Nets {
						if nc.IfaceID == id {
							info.Backend = nc.HostDevName
						}
					}
				}
			}
		default:
			info.Kind = "virtio-block"
			for _, dc := range v.cfg.Drives {
				if "block "+dc.ID == d.name {
					info.Backend = dc.Path
				}
			}
		}
		out = append(out, info)
	}
	return out
}

// saveState collects the state file's content. The VM must be paused.
func (v *VM) saveState(kind snapshot.MemoryKind, overlays map[string]disk.Identity) (*snapshot.State, error) {
	cpuid, err := v.cpus[0].fd.GetCPUID2()
	if err != nil {
		return nil, err
	}
	msrs, err := v.sys.MSRsToSave(cpuid)
	if err != nil {
		return nil, err
	}
	if msrs, err = v.cpus[0].fd.ReadableMSRs(msrs); err != nil {
		return nil, err
	}
	st := &snapshot.State{Header: snapshot.Header{
		EmberVersion: EmberVersion,
		Created:      time.Now().UTC(),
		HostKernel:   hostKernel(),
		CPUVendor:    snapshot.VendorFromCPUID(cpuid),
		VCPUCount:    len(v.cpus),
		MemorySize:   v.mem.Size(),
		MemoryKind:   kind,
		Devices:      v.deviceInfos(),
	}}
	for _, r := range v.mem.Regions() {
		st.Header.Regions = append(st.Header.Regions, snapshot.Region{GuestAddr: r.GuestAddr, Size: r.Size()})
	}
	for _, c := range v.cpus {
		s, err := c.fd.SaveState(msrs)
		if err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", c.id, err)
		}
		st.VCPUs = append(st.VCPUs, *s)
	}
	vms, err := v.vm.SaveState()
	if err != nil {
		return nil, err
	}
	// Created is when kvmclock was read: a clock_realtime restore on a
	// host whose KVM_GET_CLOCK gives no CLOCK_REALTIME reference advances
	// the clock by the wall time since.
	st.Header.Created = time.Now().UTC()
	st.VM = *vms
	add := func(name string, x any) error {
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Errorf("device %s: %w", name, err)
		}
		st.Devices = append(st.Devices, snapshot.Device{Name: name, Data: b})
		return nil
	}
	sc := saveConfig(&v.cfg)
	sc.DriveOverlays = overlays
	if err := add(sectionConfig, sc); err != nil {
		return nil, err
	}
	if err := add(sectionSerial, v.serial.SaveState()); err != nil {
		return nil, err
	}
	if err := add(sectionI8042, v.i8042.SaveState()); err != nil {
		return nil, err
	}
	if v.vmgenid != nil {
		if err := add(sectionVMGenID, v.vmgenid.saveState()); err != nil {
			return nil, err
		}
	}
	for _, d := range v.virtio {
		ts, err := d.transport.SaveState()
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.name, err)
		}
		if err := add(d.name, ts); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func hostKernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// takeDirty moves the pages dirtied since the last snapshot into
// v.unsaved and returns it: one bitmap per memory slot, KVM's dirty log
// (KVM_GET_DIRTY_LOG, which also clears it) ORed with the pages the virtio
// devices wrote (writeTracker.take, which clears those too). Both sources
// forget what they handed over, so the bits stay in v.unsaved until a
// snapshot holding them is durable (CreateSnapshot then drops them); a
// snapshot that fails leaves them there for the next one to include. On
// error the slots read so far are kept in v.unsaved as well.
func (v *VM) takeDirty() ([][]uint64, error) {
	regions := v.mem.Regions()
	if v.unsaved == nil {
		v.unsaved = make([][]uint64, len(regions))
		for i, r := range regions {
			v.unsaved[i] = make([]uint64, (r.Size()/snapshot.PageSize+63)/64)
		}
	}
	for i, r := range regions {
		b, err := v.vm.DirtyBitmap(uint32(i), r.Size()/snapshot.PageSize)
		if err != nil {
			return nil, fmt.Errorf("dirty log of memory slot %d: %w", i, err)
		}
		for w, bits := range b {
			v.unsaved[i][w] |= bits
		}
		if v.tracker != nil {
			v.tracker.take(i, v.unsaved[i])
		}
	}
	return v.unsaved, nil
}

// CreateSnapshot writes the paused VM's state file and memory file. Full
// writes all of RAM; Diff the pages the guest dirtied since the previous
// snapshot (or boot), which needs TrackDirtyPages. Each file appears
// whole or not at all: on error existing files are untouched.
//
// The Diff's pages are those in KVM's dirty log (the guest's writes) and
// those the virtio devices wrote (recorded by writeTracker), since the last
// snapshot that succeeded: the pages of a failed one (a full disk, an I/O
// error) are kept for the next (see takeDirty).
func (v *VM) CreateSnapshot(p SnapshotCreate) (err error) {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if !v.paused {
		return ErrNotPaused
	}
	typ := p.Type
	if typ == "" {
		typ = SnapshotFull
	}
	if typ != SnapshotFull && typ != SnapshotDiff {
		return invalid("snapshot_type %q: want %s or %s", typ, SnapshotFull, SnapshotDiff)
	}
	if typ == SnapshotDiff && !v.cfg.TrackDirtyPages {
		return invalid("a Diff snapshot needs track_dirty_pages set in the machine configuration")
	}
	if p.SnapshotPath == "" || p.MemFilePath == "" {
		return invalid("snapshot_path and mem_file_path are required")
	}
	// Firecracker resets vsock connections when it takes a snapshot: the
	// guest finds the reset event in the snapshot and drops them. The
	// worker posts it, so it runs for that moment (the vCPUs stay parked).
	if v.vsock != nil {
		v.vsock.Resume()
		if err := v.vsock.TransportReset(); err != nil && !errors.Is(err, vsock.ErrNotActive) {
			v.log.Warn("snapshot: vsock transport reset", "err", err)
		}
		v.vsock.Pause()
	}
	for _, d := range v.drives {
		if err := d.Flush(); err != nil {
			return err
		}
	}
	overlays, err := v.recordOverlays()
	if err != nil {
		return err
	}
	st, err := v.saveState(snapshot.MemoryKind(typ), overlays)
	if err != nil {
		return fmt.Errorf("saving the microVM state: %w", err)
	}
	regions := make([][]byte, 0, len(v.mem.Regions()))
	for _, r := range v.mem.Regions() {
		regions = append(regions, r.Host)
	}
	var dirty [][]uint64
	if v.cfg.TrackDirtyPages {
		// Read even for Full: it clears the log, so the next Diff is
		// relative to this snapshot.
		if dirty, err = v.takeDirty(); err != nil {
			return err
		}
	}
	var memTmp, stateTmp string
	defer func() {
		if err != nil {
			for _, f := range []string{memTmp, stateTmp} {
				if f != "" {
					os.Remove(f)
				}
			}
		}
	}()
	if memTmp, err = tempPath(p.MemFilePath); err != nil {
		return err
	}
	if stateTmp, err = tempPath(p.SnapshotPath); err != nil {
		return err
	}
	if typ == SnapshotFull {
		err = snapshot.WriteFull(memTmp, regions)
	} else {
		err = snapshot.WriteDiff(memTmp, regions, dirty)
	}
	if err != nil {
		return fmt.Errorf("writing the memory file: %w", err)
	}
	if err = snapshot.Write(stateTmp, st); err != nil {
		return fmt.Errorf("writing the snapshot file: %w", err)
	}
	if err = os.Rename(memTmp, p.MemFilePath); err != nil {
		return err
	}
	if err = os.Rename(stateTmp, p.SnapshotPath); err != nil {
		return err
	}
	if err = syncDirs(p.MemFilePath, p.SnapshotPath); err != nil {
		return err
	}
	// Durable: the next Diff is relative to this snapshot.
	v.unsaved = nil
	v.log.Info("snapshot created", "type", typ, "snapshot_path", p.SnapshotPath, "mem_file_path", p.MemFilePath)
	return nil
}

// syncDirs makes the renames of the snapshot's files durable: it syncs the
// directory of each path.
func syncDirs(paths ...string) error {
	for _, p := range paths {
		if err := snapshot.SyncDir(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// tempPath reserves a fresh name beside path for a file renamed onto it.
func tempPath(path string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	name := f.Name()
	f.Close()
	return name, nil
}

// LoadSnapshot builds a VM from a snapshot: guest memory maps the memory
// file privately (pages load on first touch; the file must not change
// while the VM lives), the KVM VM and vCPUs get the saved state, the
// devices are rebuilt from the saved configuration (with base's console and
// logger and p's overrides) and their state restored. The VM comes back
// paused whatever p.ResumeVM says: Run it, then Resume (the Controller does
// so for ResumeVM). It returns the configuration the VM was built from.
// Errors in the snapshot or its files wrap ErrBadSnapshot.
func LoadSnapshot(base Config, p SnapshotLoad) (_ *VM, _ Config, err error) {
	bad := func(err error) error { return fmt.Errorf("%w: %w", ErrBadSnapshot, err) }
	t0 := time.Now()
	var phases []any
	phase := func(name string) {
		now := time.Now()
		phases = append(phases, name+"_us", now.Sub(t0).Microseconds())
		t0 = now
	}
	st, err := snapshot.Read(p.SnapshotPath)
	if err != nil {
		return nil, Config{}, bad(err)
	}
	if err := st.Header.Validate(); err != nil {
		return nil, Config{}, bad(err)
	}
	if len(st.VCPUs) != st.Header.VCPUCount {
		return nil, Config{}, bad(fmt.Errorf("%d vCPU states for %d vCPUs", len(st.VCPUs), st.Header.VCPUCount))
	}
	secs := map[string][]byte{}
	for _, d := range st.Devices {
		secs[d.Name] = d.Data
	}
	var sc savedConfig
	if err := json.Unmarshal(secs[sectionConfig], &sc); err != nil {
		return nil, Config{}, bad(fmt.Errorf("machine configuration section: %w", err))
	}
	cfg := base.clone()
	sc.apply(&cfg)
	cfg.TrackDirtyPages = p.TrackDirtyPages
	cfg.PIT = st.VM.PIT != nil
	for i := range cfg.Nets {
		if tap, ok := p.NetOverrides[cfg.Nets[i].IfaceID]; ok {
			cfg.Nets[i].HostDevName = tap
		}
	}
	for id := range p.NetOverrides {
		found := false
		for _, n := range cfg.Nets {
			found = found || n.IfaceID == id
		}
		if !found {
			return nil, Config{}, bad(fmt.Errorf("network_overrides: the snapshot has no interface %q", id))
		}
	}
	if p.VsockUDSPath != "" {
		if cfg.Vsock == nil {
			return nil, Config{}, bad(errors.New("vsock_override: the snapshot has no vsock device"))
		}
		cfg.Vsock.UDSPath = p.VsockUDSPath
	}
	if uint64(cfg.MemMiB)<<20 != st.Header.MemorySize || cfg.VCPUs != st.Header.VCPUCount {
		return nil, Config{}, bad(errors.New("the machine configuration does not match the header"))
	}
	made, err := overrideDrives(&cfg, sc, p)
	if err != nil {
		return nil, Config{}, bad(err)
	}
	defer func() {
		if err != nil {
			for _, f := range made {
				os.Remove(f)
			}
		}
	}()

	v := &VM{cfg: cfg, log: cfg.Logger, fate: make(chan Fate, 1), stopped: make(chan struct{}), uffd: -1, pauseTimeout: pauseTimeout}
	if v.log == nil {
		v.log = slog.Default()
	}
	if v.cfg.StartTime.IsZero() {
		v.cfg.StartTime = time.Now()
	}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	phase("read")
	var maps [][]byte
	if p.UffdPath != "" {
		maps, v.uffd, err = snapshot.MapUffd(st.Header.RegionSizes())
		if err == nil {
			if err = snapshot.SendUffd(p.UffdPath, maps, v.uffd); err != nil {
				snapshot.Unmap(maps)
				maps = nil
			}
		}
	} else {
		maps, err = snapshot.MapPrivate(p.MemFilePath, st.Header.RegionSizes())
	}
	if err != nil {
		return nil, Config{}, bad(err)
	}
	regions := make([]memory.Region, len(maps))
	for i, m := range maps {
		regions[i] = memory.Region{GuestAddr: st.Header.Regions[i].GuestAddr, Host: m}
	}
	v.mem = memory.FromRegions(regions)
	if cfg.HugePages == HugePagesTransparent {
		_ = v.mem.AdviseHugePages() // file-backed: advisory only
	}
	phase("map")
	if err := v.openKVM(); err != nil {
		return nil, Config{}, err
	}
	phase("kvm")
	supported, err := v.checkVendor(st.Header.CPUVendor)
	if err == nil {
		err = v.setupDevices()
	}
	if err == nil {
		err = v.bindDoorbells()
	}
	if err == nil {
		err = v.createIRQChip()
	}
	if err == nil {
		err = v.bindInterrupts()
	}
	if err == nil {
		if err = v.vm.RestoreStateWith(&st.VM, kvm.RestoreOptions{ClockRealtime: p.ClockRealtime, SavedAt: st.Header.Created}); err != nil {
			err = bad(fmt.Errorf("restoring the VM state: %w", err))
		}
	}
	for i := 0; err == nil && i < len(st.VCPUs); i++ {
		var fd *kvm.VCPU
		if fd, err = v.vm.CreateVCPU(i); err == nil {
			v.cpus = append(v.cpus, &vcpu{vm: v, id: i, fd: fd})
		}
	}
	if err != nil {
		return nil, Config{}, err
	}
	phase("devices_vcpus_created")
	if err := v.checkCPUIDFeatures(st, supported); err != nil {
		return nil, Config{}, err
	}
	for i, c := range v.cpus {
		if err := c.fd.RestoreState(&st.VCPUs[i]); err != nil {
			return nil, Config{}, bad(fmt.Errorf("restoring vCPU %d: %w", i, err))
		}
	}
	phase("vcpus")
	if err := v.restoreDevices(secs); err != nil {
		return nil, Config{}, bad(err)
	}
	if err := v.restoreVMGenID(secs); err != nil {
		return nil, Config{}, bad(err)
	}
	if v.vmgenid != nil {
		// Raised now, with the irqchips and local APICs restored, the
		// interrupt waits in the vCPU's APIC until the VM resumes; the
		// guest then finds the new ID already in memory.
		if err := v.vmgenid.notify(v.vm); err != nil {
			return nil, Config{}, fmt.Errorf("VM generation ID notification: %w", err)
		}
	}
	phase("device_state")
	// Paused until Resume: the vCPUs park on their first iteration.
	v.pauseReq.Store(&pauseRound{parked: make(chan int, len(v.cpus)), resume: make(chan struct{})})
	v.paused = true
	for _, d := range v.virtio {
		if pd, ok := d.transport.Device().(pauser); ok {
			pd.Pause()
		}
	}
	v.log.Info("snapshot loaded", append([]any{"snapshot_path", p.SnapshotPath, "mem_file_path", p.MemFilePath, "uffd", p.UffdPath,
		"vcpus", len(v.cpus), "mem_mib", cfg.MemMiB, "devices", len(st.Header.Devices)}, phases...)...)
	return v, cfg, nil
}

// checkVendor refuses a snapshot taken on another CPU vendor's host. It
// returns this host's KVM_GET_SUPPORTED_CPUID.
func (v *VM) checkVendor(saved string) ([]kvm.CPUIDEntry, error) {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	if host := snapshot.VendorFromCPUID(supported); host != saved {
		return nil, fmt.Errorf("%w: the snapshot was taken on a %s CPU; this host's is %s", ErrBadSnapshot, saved, host)
	}
	return supported, nil
}

// checkCPUIDFeatures refuses a snapshot whose vCPUs use CPUID features
// this host cannot give them (one moved to an older CPU model). What a
// host offers is KVM_GET_SUPPORTED_CPUID and, on hosts whose KVM adds
// bits of its own (a PVM host fills in the real CPU's features on
// KVM_SET_CPUID2, beyond what it lists as supported), what vCPU 0 holds
// after being given that list; vCPU 0's CPUID is then overwritten by the
// restore. Leaves KVM declines outright are found by the restore itself
// (kvm.VCPU.RestoreState), as are MSRs it refuses.
func (v *VM) checkCPUIDFeatures(st *snapshot.State, supported []kvm.CPUIDEntry) error {
	c := v.cpus[0].fd
	if err := c.SetCPUID2(supported); err != nil {
		return err
	}
	held, err := c.GetCPUID2()
	if err != nil {
		return err
	}
	for i := range st.VCPUs {
		if err := x86.CheckCPUIDFeatures(st.VCPUs[i].CPUID, supported, held); err != nil {
			return fmt.Errorf("%w: vCPU %d: %w", ErrBadSnapshot, i, err)
		}
	}
	return nil
}

// restoreDevices loads the saved device states.
func (v *VM) restoreDevices(secs map[string][]byte) error {
	var ss devices.SerialState
	if err := json.Unmarshal(secs[sectionSerial], &ss); err != nil {
		return fmt.Errorf("serial state: %w", err)
	}
	if err := v.serial.RestoreState(ss); err != nil {
		return err
	}
	var ks devices.I8042State
	if err := json.Unmarshal(secs[sectionI8042], &ks); err != nil {
		return fmt.Errorf("i8042 state: %w", err)
	}
	if err := v.i8042.RestoreState(ks); err != nil {
		return err
	}
	for _, d := range v.virtio {
		b, ok := secs[d.name]
		if !ok {
			return fmt.Errorf("no state for device %q", d.name)
		}
		var ms virtio.MMIOState
		if err := json.Unmarshal(b, &ms); err != nil {
			return fmt.Errorf("device %s: %w", d.name, err)
		}
		if err := d.transport.RestoreState(ms); err != nil {
			return fmt.Errorf("device %s: %w", d.name, err)
		}
	}
	return nil
}
