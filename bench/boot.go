package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/vmm"
)

// Settings shared by the boot benchmarks.
const (
	// InitMarker is the first line the test init prints (guest/init/init).
	InitMarker = "ember-guest: init reached"
	// qemuDebugExitOK is QEMU's exit status when the guest writes 0 to
	// isa-debug-exit: (value << 1) | 1.
	qemuDebugExitOK = 1
	guestMemMiB     = 128
)

// QEMUBinary is the reference VMM.
const QEMUBinary = "qemu-system-x86_64"

// TinyResult holds the on-host tiny-guest figures (medians).
type TinyResult struct {
	EmberMS, EmberRSSMiB float64
	QEMUMS, QEMURSSMiB   float64
	Runs                 int
}

// Tiny boots the tiny PVH guest runs times with Ember and with QEMU's
// microvm machine, alternately, on this host's /dev/kvm.
func Tiny(ctx context.Context, ember string, runs int, progress io.Writer) (TinyResult, error) {
	img, err := WriteTemp("", "ember-tiny-*.elf", tiny.Image())
	if err != nil {
		return TinyResult{}, err
	}
	defer os.Remove(img)
	emberArgv := []string{ember, "run", "--kernel", img, "--mem-mib", fmt.Sprint(guestMemMiB), "--boot-timer"}
	qemuArgv := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host",
		"-m", fmt.Sprint(guestMemMiB), "-nodefaults", "-no-user-config", "-display", "none",
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=4", tiny.DebugExitPort), "-kernel", img}
	var em, er, qm, qr []float64
	for i := 0; i < runs; i++ {
		s, _, err := RunToExit(ctx, emberArgv, 0)
		if err != nil {
			return TinyResult{}, fmt.Errorf("ember tiny guest: %w", err)
		}
		em, er = append(em, ms(s.Wall)), append(er, mib(s.PeakRSS))
		s, _, err = RunToExit(ctx, qemuArgv, qemuDebugExitOK)
		if err != nil {
			return TinyResult{}, fmt.Errorf("qemu tiny guest: %w", err)
		}
		qm, qr = append(qm, ms(s.Wall)), append(qr, mib(s.PeakRSS))
		fmt.Fprintf(progress, "tiny run %d: ember %.2f ms %.1f MiB, qemu %.2f ms %.1f MiB\n", i+1, em[i], er[i], qm[i], qr[i])
	}
	return TinyResult{Median(em), Median(er), Median(qm), Median(qr), runs}, nil
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
	const timeout = 3 * time.Minute
	var e, q []float64
	for i := 0; i < runs; i++ {
		d, out, err := RunToMarker(ctx, emberArgv, InitMarker, timeout)
		if err != nil {
			return LabResult{}, fmt.Errorf("ember: %w\n%s", err, tail(out))
		}
		e = append(e, ms(d))
		d, out, err = RunToMarker(ctx, qemuArgv, InitMarker, timeout)
		if err != nil {
			return LabResult{}, fmt.Errorf("qemu: %w\n%s", err, tail(out))
		}
		q = append(q, ms(d))
		fmt.Fprintf(progress, "lab run %d (%s): ember %.0f ms, qemu %.0f ms\n", i+1, filepath.Base(kernel), e[i], q[i])
	}
	return LabResult{Median(e), Median(q), runs}, nil
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
