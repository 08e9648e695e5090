package api

import (
	"encoding/json"

	"github.com/embervm/ember/virtio/balloon"
)

// The JSON models of Firecracker 1.16's API (swagger firecracker.yaml). Type
// names are the swagger definitions'; field names follow Go's conventions,
// and the JSON names are Firecracker's.
//
// Struct tags: `api:"required"` marks the fields Firecracker requires; the
// strict decoder (decode.go) refuses a body without them. Pointers are used
// where Firecracker tells an absent field from a zero one (PATCH bodies,
// optional settings whose absence means "default" or "unchanged").

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// InstanceInfo is the answer to GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// FirecrackerVersion is the answer to GET /version.
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type" api:"required"`
}

// Huge page settings of MachineConfiguration.HugePages.
const (
	HugePagesNone        = "None"
	HugePagesTransparent = "Transparent"
	HugePages2M          = "2M"
)

// CPUTemplateNone is the only static CPU template Ember accepts.
const CPUTemplateNone = "None"

// MachineConfiguration is the body of PUT and PATCH /machine-config and the
// answer to GET /machine-config. PUT requires VCPUCount and MemSizeMiB and
// resets the other fields to their defaults when absent; PATCH changes only
// the fields given.
type MachineConfiguration struct {
	VCPUCount       *int    `json:"vcpu_count,omitempty"`
	MemSizeMiB      *int    `json:"mem_size_mib,omitempty"`
	SMT             *bool   `json:"smt,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
	// CPUTemplate is Firecracker's deprecated static template; only
	// "None" is accepted.
	CPUTemplate *string `json:"cpu_template,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path" api:"required"`
	// BootArgs is the kernel command line; absent means Ember's default
	// (vmm.DefaultCmdline).
	BootArgs   *string `json:"boot_args,omitempty"`
	InitrdPath *string `json:"initrd_path,omitempty"`
}

// TokenBucket is Firecracker's TokenBucket: Size tokens refilled every
// RefillTime milliseconds, plus a one-time burst. Size or RefillTime 0
// disables the bucket.
type TokenBucket struct {
	Size         uint64  `json:"size" api:"required"`
	OneTimeBurst *uint64 `json:"one_time_burst,omitempty"`
	RefillTime   uint64  `json:"refill_time" api:"required"`
}

// RateLimiter is Firecracker's RateLimiter: a bandwidth (bytes) bucket and
// an operations bucket, both optional.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive cache types and I/O engines.
const (
	CacheTypeUnsafe    = "Unsafe"
	CacheTypeWriteback = "Writeback"
	IOEngineSync       = "Sync"
	IOEngineAsync      = "Async"
)

// Drive is the body of PUT /drives/{id}.
type Drive struct {
	DriveID      string `json:"drive_id" api:"required"`
	PartUUID     string `json:"partuuid,omitempty"`
	IsRootDevice bool   `json:"is_root_device" api:"required"`
	// CacheType is CacheTypeUnsafe (the default) or CacheTypeWriteback.
	CacheType string `json:"cache_type,omitempty"`
	// IsReadOnly, PathOnHost, RateLimiter and IOEngine describe a
	// virtio-blk drive; PathOnHost is required for one.
	IsReadOnly  bool         `json:"is_read_only"`
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
	IOEngine    string       `json:"io_engine,omitempty"`
	// Socket describes a vhost-user-blk drive, which Ember does not
	// support.
	Socket string `json:"socket,omitempty"`
	// EmberBasePath, an Ember extension, makes the drive copy-on-write:
	// PathOnHost is then an overlay (made by `ember disk create`) over
	// this read-only base file.
	EmberBasePath string `json:"ember_base_path,omitempty"`
}

// PartialDrive is the body of PATCH /drives/{id} (after boot): a new
// backing file, a new rate limiter, or both.
type PartialDrive struct {
	DriveID     string       `json:"drive_id" api:"required"`
	PathOnHost  *string      `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{id}.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id" api:"required"`
	HostDevName   string       `json:"host_dev_name" api:"required"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	MTU           *int         `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PartialNetworkInterface is the body of PATCH /network-interfaces/{id}
// (after boot): new rate limiters, merged with the current ones.
type PartialNetworkInterface struct {
	IfaceID       string       `json:"iface_id" api:"required"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid" api:"required"`
	UDSPath  string `json:"uds_path" api:"required"`
	// VsockID is deprecated in Firecracker; it is accepted and ignored.
	VsockID *string `json:"vsock_id,omitempty"`
}

// EntropyDevice is the body of PUT /entropy.
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Balloon is the body of PUT /balloon and the answer to GET /balloon.
type Balloon struct {
	AmountMiB    uint32 `json:"amount_mib" api:"required"`
	DeflateOnOOM bool   `json:"deflate_on_oom" api:"required"`
	// StatsPollingIntervalS > 0 enables statistics.
	StatsPollingIntervalS int `json:"stats_polling_interval_s"`
	// FreePageHinting and FreePageReporting are not supported by Ember:
	// true is refused.
	FreePageHinting   bool `json:"free_page_hinting"`
	FreePageReporting bool `json:"free_page_reporting"`
}

// BalloonUpdate is the body of PATCH /balloon.
type BalloonUpdate struct {
	AmountMiB uint32 `json:"amount_mib" api:"required"`
}

// BalloonStatsUpdate is the body of PATCH /balloon/statistics.
type BalloonStatsUpdate struct {
	StatsPollingIntervalS int `json:"stats_polling_interval_s" api:"required"`
}

// BalloonStats is the answer to GET /balloon/statistics.
type BalloonStats = balloon.Stats

// Logger is the body of PUT /logger. It is handed to
// Options.ConfigureLogger; absent fields keep their defaults.
type Logger struct {
	LogPath *string `json:"log_path,omitempty"`
	// Level is Error, Warning, Info, Debug, Trace or Off, in any case.
	Level         *string `json:"level,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics. It is handed to
// Options.ConfigureMetrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path" api:"required"`
	// EmitID adds the instance id to every metrics line.
	EmitID *bool `json:"emit_id,omitempty"`
	// Properties are added to every metrics line.
	Properties map[string]string `json:"properties,omitempty"`
}

// SerialConfig is the body of PUT /serial (swagger's SerialDevice).
type SerialConfig struct {
	SerialOutPath *string `json:"serial_out_path,omitempty"`
	// RateLimiter caps the bytes written to serial_out_path; beyond it
	// the guest's output is dropped. Absent, Ember's default cap applies.
	RateLimiter *TokenBucket `json:"rate_limiter,omitempty"`
}

// CpuConfig is the body of PUT /cpu-config: a custom CPU template. Leaves,
// subleaves and MSR addresses are numbers written as strings ("0x1",
// "0b101", "7") or plain JSON numbers; bitmaps are "0b" and 32 (CPUID) or 64
// (MSR) characters of 0, 1 or x (keep the bit), underscores allowed.
type CpuConfig struct {
	KVMCapabilities []string            `json:"kvm_capabilities,omitempty"`
	CPUIDModifiers  []CpuidLeafModifier `json:"cpuid_modifiers,omitempty"`
	MSRModifiers    []MsrModifier       `json:"msr_modifiers,omitempty"`
	// RegModifiers and VCPUFeatures are aarch64-only; Ember (x86_64)
	// refuses them.
	RegModifiers json.RawMessage `json:"reg_modifiers,omitempty"`
	VCPUFeatures json.RawMessage `json:"vcpu_features,omitempty"`
}

// CpuidLeafModifier modifies the registers of one CPUID leaf and subleaf.
type CpuidLeafModifier struct {
	Leaf      Number                  `json:"leaf" api:"required"`
	Subleaf   Number                  `json:"subleaf" api:"required"`
	Flags     uint32                  `json:"flags" api:"required"`
	Modifiers []CpuidRegisterModifier `json:"modifiers" api:"required"`
}

// CpuidRegisterModifier modifies one CPUID register (eax, ebx, ecx, edx).
type CpuidRegisterModifier struct {
	Register string `json:"register" api:"required"`
	Bitmap   string `json:"bitmap" api:"required"`
}

// MsrModifier modifies one MSR.
type MsrModifier struct {
	Addr   Number `json:"addr" api:"required"`
	Bitmap string `json:"bitmap" api:"required"`
}

// FullVmConfiguration is the answer to GET /vm/config and the schema of the
// --config-file. "boot-source" and "drives" are required in a config file,
// as in Firecracker, unless "ember-image" is given. "cpu-config" is, in a
// config file, the path of a CPU template file (Firecracker's form) or the
// template itself; GET /vm/config
// gives the template itself. The pmem and memory hot-plug sections are not
// supported yet: they must be absent, null or empty.
type FullVmConfiguration struct {
	Balloon *Balloon `json:"balloon"`
	// Drives and BootSource are required unless EmberImage is given
	// (ApplyConfigFile checks, in the decoder's words).
	Drives            []Drive               `json:"drives"`
	BootSource        *BootSource           `json:"boot-source"`
	CPUConfig         *CPUConfigSource      `json:"cpu-config"`
	Logger            *Logger               `json:"logger"`
	MachineConfig     *MachineConfiguration `json:"machine-config"`
	Metrics           *Metrics              `json:"metrics"`
	MMDSConfig        *MmdsConfig           `json:"mmds-config"`
	NetworkInterfaces []NetworkInterface    `json:"network-interfaces"`
	Vsock             *Vsock                `json:"vsock"`
	Entropy           *EntropyDevice        `json:"entropy"`
	Pmem              json.RawMessage       `json:"pmem"`
	MemoryHotplug     json.RawMessage       `json:"memory-hotplug"`
	// EmberImage, an Ember extension of the config file, boots an image
	// of Ember's store (see image.go): its drives are added after
	// "drives", its initrd is the boot source's, and "boot-source" and
	// "drives" may then be left out (the image's kernel is used). GET /vm/config never
	// has it: it shows the drives and initrd the image became.
	EmberImage *EmberImage `json:"ember-image,omitempty"`
}

// Error is the body of every error answer.
type Error struct {
	FaultMessage string `json:"fault_message"`
}

// Ptr returns a pointer to v, for the optional fields of the models.
func Ptr[T any](v T) *T { return &v }
