package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/vmm"
)

// Settings shared by the boot benchmarks.
const (
	// InitMarker is the first line the test init prints (guest/testinit/init).
	InitMarker = "ember-guest: init reached"
	// qemuDebugExitOK is QEMU's exit status when the guest writes 0 to
	// isa-debug-exit: (value << 1) | 1.
	qemuDebugExitOK = 1
	guestMemMiB     = 128
)

// QEMUBinary is the reference VMM.
const QEMUBinary = "qemu-system-x86_64"

// TinyResult holds the on-host tiny-guest figures (medians). The Ember
// figures are without seccomp (--no-seccomp) but EmberSeccompMS, the same
// run with the built-in filters: their difference is what confinement
// costs.
type TinyResult struct {
	EmberMS, EmberRSSMiB float64
	EmberSeccompMS       float64
	// EmberGuestMS is exec until the guest runs its first instruction
	// (Ember's boot timer, boot_us: the guest's first port write).
	EmberGuestMS       float64
	QEMUMS, QEMURSSMiB float64
	Runs               int
}

// bootUS is the boot timer's figure in Ember's log.
var bootUS = regexp.MustCompile(`boot_us=(\d+)`)

// Tiny boots the tiny PVH guest runs times with Ember without seccomp,
// with Ember with it, and with QEMU's microvm machine, alternately, on this
// host's /dev/kvm. measurer measures each run (RunToExitRSS).
func Tiny(ctx context.Context, ember, measurer string, runs int, progress io.Writer) (TinyResult, error) {
	img, err := WriteTemp("", "ember-tiny-*.elf", tiny.Image())
	if err != nil {
		return TinyResult{}, err
	}
	defer os.Remove(img)
	emberArgv := []string{ember, "run", "--kernel", img, "--mem-mib", fmt.Sprint(guestMemMiB), "--boot-timer", "--no-seccomp"}
	seccompArgv := emberArgv[:len(emberArgv)-1]
	// "host" minus arch-capabilities: on this project's PVM host QEMU aborts
	// when KVM refuses MSR_IA32_ARCH_CAPABILITIES (0x10a).
	qemuArgv := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", fmt.Sprint(guestMemMiB), "-nodefaults", "-no-user-config", "-display", "none",
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=4", tiny.DebugExitPort), "-kernel", img}
	var em, er, eg, es, qm, qr []float64
	for i := 0; i < runs; i++ {
		s, out, err := RunToExitRSS(ctx, measurer, emberArgv, 0)
		if err != nil {
			return TinyResult{}, fmt.Errorf("ember tiny guest: %w", err)
		}
		m := bootUS.FindSubmatch(out)
		if m == nil {
			return TinyResult{}, fmt.Errorf("ember tiny guest: no boot_us in its log\n%s", out)
		}
		us, _ := strconv.Atoi(string(m[1]))
		em, er, eg = append(em, ms(s.Wall)), append(er, mib(s.PeakRSS)), append(eg, float64(us)/1000)
		if s, _, err = RunToExitRSS(ctx, measurer, seccompArgv, 0); err != nil {
			return TinyResult{}, fmt.Errorf("ember tiny guest with seccomp: %w", err)
		}
		es = append(es, ms(s.Wall))
		s, _, err = RunToExitRSS(ctx, measurer, qemuArgv, qemuDebugExitOK)
		if err != nil {
			return TinyResult{}, fmt.Errorf("qemu tiny guest: %w", err)
		}
		qm, qr = append(qm, ms(s.Wall)), append(qr, mib(s.PeakRSS))
		fmt.Fprintf(progress, "tiny run %d: ember %.2f ms (guest running at %.2f ms) %.1f MiB, with seccomp %.2f ms, qemu %.2f ms %.1f MiB\n",
			i+1, em[i], eg[i], er[i], es[i], qm[i], qr[i])
	}
	return TinyResult{EmberMS: Median(em), EmberRSSMiB: Median(er), EmberGuestMS: Median(eg), EmberSeccompMS: Median(es),
		QEMUMS: Median(qm), QEMURSSMiB: Median(qr), Runs: runs}, nil
}

// LabResult holds the in-lab time-to-init figures (medians).
type LabResult struct {
	EmberMS, QEMUMS float64
	Runs            int
}

// Ratio is Ember's median over QEMU's: below 1 means Ember is faster.
func (r LabResult) Ratio() float64 { return r.EmberMS / r.QEMUMS }

// LabBoot boots the same kernel and initramfs with Ember and with QEMU's
// microvm machine, alternately, and measures exec until the guest's init
// prints its first line. It runs inside the lab, where KVM is real.
func LabBoot(ctx context.Context, ember, kernel, initrd string, runs int, progress io.Writer) (LabResult, error) {
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			return LabResult{}, err
		}
	}
	// Ember's default command line (the i8042 flags spare the guest a slow
	// AUX-port probe; QEMU's microvm has no i8042 and ignores them).
	cmdline := vmm.DefaultCmdline + " ember_mode=uname"
	emberArgv := []string{ember, "run", "--kernel", kernel, "--initrd", initrd, "--mem-mib", fmt.Sprint(guestMemMiB), "--cmdline", cmdline}
	qemuArgv := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host",
		"-m", fmt.Sprint(guestMemMiB), "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline}
	var e, q []float64
	for i := 0; i < runs; i++ {
		d, err := labBootOnce(ctx, "ember", emberArgv, progress)
		if err != nil {
			return LabResult{}, err
		}
		e = append(e, ms(d))
		if d, err = labBootOnce(ctx, "qemu", qemuArgv, progress); err != nil {
			return LabResult{}, err
		}
		q = append(q, ms(d))
		fmt.Fprintf(progress, "lab run %d (%s): ember %.0f ms, qemu %.0f ms\n", i+1, filepath.Base(kernel), e[i], q[i])
	}
	return LabResult{Median(e), Median(q), runs}, nil
}

// Lab boots that hang: under TCG's nested SVM a nested guest (Ember's or
// QEMU's alike) now and then stops making progress. A boot that has not
// reached init within labBootTimeout is logged and run again, up to
// labBootAttempts times; only completed boots are timed.
const (
	labBootTimeout  = time.Minute
	labBootAttempts = 3
)

func labBootOnce(ctx context.Context, name string, argv []string, progress io.Writer) (time.Duration, error) {
	for attempt := 1; ; attempt++ {
		d, out, err := RunToMarker(ctx, argv, InitMarker, labBootTimeout)
		if err == nil {
			return d, nil
		}
		if attempt == labBootAttempts || ctx.Err() != nil {
			return 0, fmt.Errorf("%s: %w (%d attempts)\n%s", name, err, attempt, tail(out))
		}
		fmt.Fprintf(progress, "%s boot failed (%v), a lab fault? retrying; its last output:\n%s\n", name, err, tail(out))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

func tail(b []byte) []byte {
	const max = 2000
	if len(b) > max {
		return b[len(b)-max:]
	}
	return b
}
