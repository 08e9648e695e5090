package initconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// Path is where the config is found in the guest: in the initramfs, from
// the small archive the host appends for each VM.
const Path = "/ember/config.json"

// Version is the config format this package reads and writes.
const Version = 1

// Modes of the init.
const (
	// ModeRun runs Args as the workload and ends the VM with its status.
	ModeRun = "run"
	// ModeAgent serves the sandbox agent (package guest/agent) on AF_VSOCK
	// port 1024 instead of running a workload; Args are not used. User,
	// WorkingDir and Env are the defaults of the processes it starts. The
	// VM needs a vsock device.
	ModeAgent = "agent"
)

// File system types of drives.
const (
	// FSErofs is the read-only layer format the image store produces.
	FSErofs = "erofs"
	// FSExt4 is the writable drive's format; a read-only ext4 layer is
	// accepted too (mkfs.ext4 -d makes one without erofs-utils).
	FSExt4 = "ext4"
)

// Limits.
const (
	// MaxSize bounds the config file: it holds an environment and a
	// command line, which Linux caps at a few MiB together anyway (ARG_MAX
	// is a quarter of the stack limit); 1 MiB is plenty and keeps a bad
	// file from filling the init's memory.
	MaxSize = 1 << 20
	// MaxSerialLen is VIRTIO_BLK_ID_BYTES (virtio 1.2 section 5.2.6): the
	// guest sees at most 20 bytes of a drive ID.
	MaxSerialLen = 20
	// MaxLayers keeps the overlay's lowerdir option (each layer is
	// "/ember/layers/N:", at most 19 bytes at this count) well inside the
	// one page Linux allows for all mount options. (Ember attaches at most
	// vmm.MaxVirtioDevices drives today, fewer than this.)
	MaxLayers = 128
	// MaxHostnameLen is HOST_NAME_MAX (include/uapi/linux/utsname.h: 64).
	MaxHostnameLen = 64
	// MaxPathLen is PATH_MAX (include/uapi/linux/limits.h), with its NUL.
	MaxPathLen = 4096
	// MaxDNS is MAXNS of glibc and musl: a resolver reads at most three
	// nameserver lines.
	MaxDNS = 3
	// MaxShmSizeMiB bounds ShmSizeMiB at Ember's largest guest (1 TiB).
	MaxShmSizeMiB = 1 << 20
	// maxID is the largest uid or gid accepted, as runc's user package
	// does: 2^31-1 (-1 as a 32-bit id means "unchanged" to setuid).
	maxID = 1<<31 - 1
)

// Drive is one virtio-blk drive of the VM as the init finds it.
type Drive struct {
	// Serial is the drive's virtio-blk serial: the drive ID the host gave
	// it (e.g. "layer0", "rw"), 1-20 bytes of [A-Za-z0-9._-].
	Serial string `json:"serial"`
	// FSType is the file system on the drive: FSErofs or FSExt4 for
	// layers, FSExt4 for the writable drive.
	FSType string `json:"fs_type"`
}

// Config is what the init is told. The host fills it from the image's
// config and the user's request; every field is checked by Validate before
// the init acts on any.
type Config struct {
	// Version must be the package's Version.
	Version int `json:"version"`
	// Mode is ModeRun or ModeAgent.
	Mode string `json:"mode"`

	// Layers are the image's layers, lowest (the base) first; the init
	// mounts each read-only at /ember/layers/N.
	Layers []Drive `json:"layers"`
	// Writable, if set, is the drive holding the overlay's upper and work
	// directories (ext4, formatted by the host; upper/ and work/ are
	// created on its first boot and kept after). Nil puts them on a tmpfs:
	// nothing the workload writes outlives the VM.
	Writable *Drive `json:"writable,omitempty"`

	// Hostname, if set, is given to sethostname and written to
	// /etc/hostname (RFC 1123, at most 64 bytes).
	Hostname string `json:"hostname,omitempty"`
	// Env is the workload's environment, KEY=VALUE, each key once (the
	// host merges the image's Env with the user's; see MergeEnv). The init
	// adds PATH, HOME, HOSTNAME and TERM when missing.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the absolute directory the workload starts in
	// (created if missing); empty means "/".
	WorkingDir string `json:"working_dir,omitempty"`
	// User is the OCI image config's User: "", "name", "uid",
	// "name:group", "uid:gid" (or a mix), resolved against the image's
	// /etc/passwd and /etc/group. Empty means root.
	User string `json:"user,omitempty"`
	// Args is the command: the image's Entrypoint and Cmd as the host
	// resolved them, or the command the user gave. Args[0] without a slash
	// is looked up in the workload's PATH. Required in ModeRun.
	Args []string `json:"args,omitempty"`
	// Terminal says the host console is an interactive terminal: the
	// guest's console then keeps its line discipline (echo, line editing,
	// Ctrl-C as SIGINT to the workload, "\n" as "\r\n"). Otherwise the
	// console is raw, so output and piped input pass byte for byte.
	Terminal bool `json:"terminal,omitempty"`

	// ShmSizeMiB is the size of the /dev/shm tmpfs; 0 is the kernel's
	// default for a tmpfs, half of the guest's RAM.
	ShmSizeMiB int `json:"shm_size_mib,omitempty"`
	// DNS, if set, are the nameserver addresses written to
	// /etc/resolv.conf (at most three); otherwise the image's file stays.
	DNS []string `json:"dns,omitempty"`
	// Debug makes the init print each step on the console.
	Debug bool `json:"debug,omitempty"`
}

// Parse decodes and validates a config. Unknown fields, trailing data and
// files over MaxSize are errors.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("config: %d bytes, more than the %d allowed", len(data), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: data after the JSON object")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Marshal validates c and encodes it as the init reads it.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("config: %d bytes encoded, more than the %d allowed", len(b), MaxSize)
	}
	return b, nil
}

// fieldError names the field at fault.
func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...))
}

// Validate checks every field and returns the first problem, naming the
// field.
func (c *Config) Validate() error {
	if c.Version != Version {
		return fieldError("version", "%d; this init reads version %d (are ember and ember-init from the same build?)", c.Version, Version)
	}
	switch c.Mode {
	case ModeRun:
		if len(c.Args) == 0 {
			return fieldError("args", "empty: mode %q needs a command", ModeRun)
		}
	case ModeAgent:
	case "":
		return fieldError("mode", "missing; want %q or %q", ModeRun, ModeAgent)
	default:
		return fieldError("mode", "%q; want %q or %q", c.Mode, ModeRun, ModeAgent)
	}
	if err := c.validateDrives(); err != nil {
		return err
	}
	if err := validateHostname(c.Hostname); err != nil {
		return fieldError("hostname", "%q: %v", c.Hostname, err)
	}
	if err := validateEnv(c.Env); err != nil {
		return err
	}
	if c.WorkingDir != "" {
		if err := validatePath(c.WorkingDir); err != nil {
			return fieldError("working_dir", "%q: %v", c.WorkingDir, err)
		}
	}
	if _, _, err := ParseUser(c.User); err != nil {
		return fieldError("user", "%q: %v", c.User, err)
	}
	for i, a := range c.Args {
		switch {
		case i == 0 && a == "":
			return fieldError("args[0]", "empty command")
		case strings.IndexByte(a, 0) >= 0:
			return fieldError(fmt.Sprintf("args[%d]", i), "contains a NUL byte")
		}
	}
	if c.ShmSizeMiB < 0 || c.ShmSizeMiB > MaxShmSizeMiB {
		return fieldError("shm_size_mib", "%d: must be between 0 (the kernel's default) and %d", c.ShmSizeMiB, MaxShmSizeMiB)
	}
	if len(c.DNS) > MaxDNS {
		return fieldError("dns", "%d servers; resolvers read at most %d", len(c.DNS), MaxDNS)
	}
	for i, s := range c.DNS {
		if _, err := netip.ParseAddr(s); err != nil {
			return fieldError(fmt.Sprintf("dns[%d]", i), "%q is not an IP address", s)
		}
	}
	return nil
}

func (c *Config) validateDrives() error {
	if len(c.Layers) > MaxLayers {
		return fieldError("layers", "%d layers; at most %d are supported", len(c.Layers), MaxLayers)
	}
	seen := map[string]string{}
	check := func(field string, d Drive, types ...string) error {
		if err := validateSerial(d.Serial); err != nil {
			return fieldError(field+".serial", "%q: %v", d.Serial, err)
		}
		if other, dup := seen[d.Serial]; dup {
			return fieldError(field+".serial", "%q is also %s's", d.Serial, other)
		}
		seen[d.Serial] = field
		for _, t := range types {
			if d.FSType == t {
				return nil
			}
		}
		return fieldError(field+".fs_type", "%q; want %s", d.FSType, strings.Join(types, " or "))
	}
	for i, l := range c.Layers {
		if err := check(fmt.Sprintf("layers[%d]", i), l, FSErofs, FSExt4); err != nil {
			return err
		}
	}
	if c.Writable != nil {
		if err := check("writable", *c.Writable, FSExt4); err != nil {
			return err
		}
	}
	return nil
}

// validateSerial accepts what a drive ID can be and the guest can read back
// whole: 1-20 bytes of letters, digits, '.', '_' and '-'.
func validateSerial(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > MaxSerialLen {
		return fmt.Errorf("%d bytes; the guest sees at most %d", len(s), MaxSerialLen)
	}
	for _, r := range s {
		if !isAlnum(r) && r != '.' && r != '_' && r != '-' {
			return fmt.Errorf("character %q; want letters, digits, '.', '_' or '-'", r)
		}
	}
	return nil
}

// validateHostname accepts an empty name (keep the kernel's) or an RFC 1123
// host name of at most MaxHostnameLen bytes.
func validateHostname(h string) error {
	if h == "" {
		return nil
	}
	if len(h) > MaxHostnameLen {
		return fmt.Errorf("%d bytes; at most %d", len(h), MaxHostnameLen)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for _, r := range label {
			if !isAlnum(r) && r != '-' {
				return fmt.Errorf("character %q; want letters, digits, '-' and '.'", r)
			}
		}
	}
	return nil
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func validateEnv(env []string) error {
	seen := map[string]int{}
	for i, kv := range env {
		field := fmt.Sprintf("env[%d]", i)
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return fieldError(field, "%q has no '='; want KEY=VALUE", kv)
		case k == "":
			return fieldError(field, "%q has an empty name", kv)
		case strings.IndexByte(kv, 0) >= 0:
			return fieldError(field, "contains a NUL byte")
		}
		if j, dup := seen[k]; dup {
			return fieldError(field, "%s is also set by env[%d]; give each variable once (MergeEnv)", k, j)
		}
		seen[k] = i
	}
	return nil
}

func validatePath(p string) error {
	switch {
	case !path.IsAbs(p):
		return errors.New("not an absolute path")
	case len(p) >= MaxPathLen:
		return fmt.Errorf("%d bytes; at most %d", len(p), MaxPathLen-1)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("contains a NUL byte")
	}
	return nil
}

// ParseUser splits an OCI user string ("", "user", "user:group") into its
// parts and checks them: a part is a name or a decimal id up to 2^31-1;
// neither side of a colon may be empty; names hold no ':', '/', space or
// control character.
func ParseUser(s string) (user, group string, err error) {
	if s == "" {
		return "", "", nil
	}
	user, group, hasGroup := strings.Cut(s, ":")
	if err := validateUserPart(user); err != nil {
		return "", "", fmt.Errorf("user %v", err)
	}
	if hasGroup {
		if err := validateUserPart(group); err != nil {
			return "", "", fmt.Errorf("group %v", err)
		}
	}
	return user, group, nil
}

func validateUserPart(p string) error {
	if p == "" {
		return errors.New("empty")
	}
	if IsNumericID(p) {
		if _, ok := ParseID(p); !ok {
			return fmt.Errorf("id %s out of range (0-%d)", p, maxID)
		}
		return nil
	}
	for _, r := range p {
		if r == ':' || r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("name %q has character %q", p, r)
		}
	}
	return nil
}

// IsNumericID reports whether s is all decimal digits (an id, not a name).
func IsNumericID(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// ParseID parses a decimal uid or gid in the accepted range.
func ParseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxID {
		return 0, false
	}
	return uint32(n), true
}

// MergeEnv returns base with override applied, as a container runtime
// merges an image's Env with the user's: a variable set in both takes
// override's value at base's position, new ones follow in order, and a
// variable given twice in one list keeps its last value. Entries without
// '=' are dropped.
func MergeEnv(base, override []string) []string {
	var out []string
	index := map[string]int{}
	for _, list := range [][]string{base, override} {
		for _, kv := range list {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				continue
			}
			if i, seen := index[k]; seen {
				out[i] = kv
				continue
			}
			index[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}
