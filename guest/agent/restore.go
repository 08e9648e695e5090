package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// Files of the restore transaction, in Config.RunDir.
const (
	GenerationFile = "generation"
	MetadataFile   = "metadata.json"
)

// Modes of the files the restore writes: world-readable, for any program
// in the guest.
const (
	runDirMode  = 0o755
	runFileMode = 0o644
)

// Clock sets the wall clock.
type Clock interface {
	SetRealtime(t time.Time) error
}

// Entropy feeds the kernel's random number generator.
type Entropy interface {
	// AddAndReseed adds b to the input pool, credited as entropy, and
	// reseeds the CRNG from it.
	AddAndReseed(b []byte) error
}

// Network re-addresses an interface.
type Network interface {
	Configure(n proto.Parsed) error
}

// Host names the guest.
type Host interface {
	SetHostname(name string) error
}

// SystemHost sets the host name with sethostname(2) (CAP_SYS_ADMIN, in
// the agent's UTS namespace: the guest's).
type SystemHost struct{}

// SetHostname sets the host name.
func (SystemHost) SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname(%q): %w", name, err)
	}
	return nil
}

// SystemClock sets CLOCK_REALTIME with clock_settime(2) (CAP_SYS_TIME).
// Settime is the system call; nil means unix.ClockSettime (tests give a
// recorder: they must not change the host's clock).
type SystemClock struct {
	Settime func(clockid int32, ts *unix.Timespec) error
}

// SetRealtime sets the wall clock to t.
func (c SystemClock) SetRealtime(t time.Time) error {
	settime := c.Settime
	if settime == nil {
		settime = unix.ClockSettime
	}
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := settime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime(CLOCK_REALTIME): %w", err)
	}
	return nil
}

// SystemEntropy writes to the kernel's pool through Device
// ("/dev/urandom" when empty) with the RNDADDENTROPY and RNDRESEEDCRNG
// ioctls (random(4); CAP_SYS_ADMIN). Adding entropy is always safe: it
// can only make the pool less predictable.
type SystemEntropy struct {
	Device string
}

// randPoolInfo is struct rand_pool_info (include/uapi/linux/random.h)
// without its flexible buffer: entropy_count in bits, buf_size in bytes.
type randPoolInfo struct {
	entropyCount int32
	bufSize      int32
}

// AddAndReseed adds b (credited at 8 bits a byte: the host drew it from
// its own CRNG) and reseeds.
func (e SystemEntropy) AddAndReseed(b []byte) error {
	dev := e.Device
	if dev == "" {
		dev = "/dev/urandom"
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The request is the header followed by the bytes, as the kernel
	// reads it; it is built in a []uint32 so the header is aligned.
	hdr := int(unsafe.Sizeof(randPoolInfo{}))
	words := make([]uint32, (hdr+len(b)+3)/4)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*4)
	info := (*randPoolInfo)(unsafe.Pointer(&words[0]))
	info.entropyCount = int32(len(b) * 8)
	info.bufSize = int32(len(b))
	copy(raw[hdr:], b)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&words[0]))); errno != 0 {
			ioErr = fmt.Errorf("RNDADDENTROPY: %w", errno)
			return
		}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0); errno != 0 {
			ioErr = fmt.Errorf("RNDRESEEDCRNG: %w", errno)
		}
	})
	if err == nil {
		err = ioErr
	}
	return err
}

// restore runs the restore transaction; see proto.Restore. Every step
// runs even if one before failed, so the reply shows the whole state; the
// stream ends with the first failure.
func (s *Server) restore(st *mux.Stream) error {
	received := time.Now()
	req, err := decode[proto.Restore](st)
	if err != nil {
		return err
	}
	s.restoreMu.Lock()
	defer s.restoreMu.Unlock()
	if cur := s.generation.Load(); req.Generation < cur {
		return proto.Errorf(proto.CodePrecondition, "generation %d is below the guest's %d: a stale restore request", req.Generation, cur)
	}
	var nw *proto.Parsed
	if req.Network != nil {
		p, _ := req.Network.Parse() // validated
		nw = &p
	}
	reply := proto.RestoreReply{Generation: req.Generation}
	step := func(name string, skip bool, f func() error) {
		if skip {
			reply.Steps = append(reply.Steps, proto.Step{Name: name, Skipped: true})
			return
		}
		t0 := time.Now()
		err := f()
		stp := proto.Step{Name: name, Duration: time.Since(t0)}
		if err != nil {
			stp.Error = err.Error()
			s.log.Error("agent: restore step failed", "step", name, "err", err)
		}
		reply.Steps = append(reply.Steps, stp)
	}
	step(proto.StepEntropy, false, func() error { return s.cfg.Entropy.AddAndReseed(req.Entropy) })
	step(proto.StepClock, false, func() error {
		// The host's time plus what the request spent here.
		return s.cfg.Clock.SetRealtime(req.Time.Add(time.Since(received)))
	})
	step(proto.StepNetwork, nw == nil, func() error { return s.cfg.Network.Configure(*nw) })
	step(proto.StepDNS, nw == nil || len(nw.DNS) == 0, func() error { return writeResolvConf(s.cfg.ResolvConf, nw.DNS) })
	step(proto.StepMetadata, false, func() error { return writeMetadata(s.cfg.RunDir, req.Metadata) })
	step(proto.StepHostname, req.Hostname == "", func() error { return s.cfg.Host.SetHostname(req.Hostname) })
	step(proto.StepGeneration, false, func() error {
		if err := writeRunFile(s.cfg.RunDir, GenerationFile, []byte(strconv.FormatUint(req.Generation, 10)+"\n")); err != nil {
			return err
		}
		s.generation.Store(req.Generation)
		return nil
	})
	if err := st.SendMsg(reply); err != nil {
		return err
	}
	if err := reply.Err(); err != nil {
		return proto.Errorf(proto.CodeInternal, "%v", err)
	}
	s.log.Info("agent: restored", "generation", req.Generation)
	return nil
}

// readGeneration reads the generation file (the agent restarted within
// one boot keeps counting from it).
func readGeneration(runDir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(runDir, GenerationFile))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// writeMetadata writes the metadata as a JSON object (always, {} when
// empty, so a clone never shows its origin's).
func writeMetadata(runDir string, md map[string]string) error {
	if md == nil {
		md = map[string]string{}
	}
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return err
	}
	return writeRunFile(runDir, MetadataFile, append(b, '\n'))
}

// writeRunFile replaces runDir/name atomically.
func writeRunFile(runDir, name string, data []byte) error {
	if err := os.MkdirAll(runDir, runDirMode); err != nil {
		return err
	}
	return replaceFile(filepath.Join(runDir, name), data)
}

// writeResolvConf writes nameserver lines to p.
func writeResolvConf(p string, dns []netip.Addr) error {
	var b strings.Builder
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	return replaceFile(p, []byte(b.String()))
}

// replaceFile writes p through a temporary file and a rename: readers see
// the old or the new contents, and a symbolic link at p (an image's
// resolv.conf often points into /run) is replaced, not written through.
func replaceFile(p string, data []byte) error {
	tmp := p + ".ember-agent.tmp"
	if err := os.WriteFile(tmp, data, runFileMode); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
