package snapshot

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/embervm/ember/kvm"
)

// Describe prints a human summary of s: the header, the memory layout as
// the memory file holds it, the devices and a line per vCPU.
func Describe(w io.Writer, s *State) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	h := &s.Header
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	version := s.Version
	if version == 0 {
		version = FormatVersion
	}
	p("Format version:\t%d", version)
	p("Ember version:\t%s", orNone(h.EmberVersion))
	if h.Created.IsZero() {
		p("Created:\t(unknown)")
	} else {
		p("Created:\t%s", h.Created.UTC().Format(time.RFC3339))
	}
	if h.HostKernel != "" {
		p("Host kernel:\t%s", h.HostKernel)
	}
	p("CPU vendor:\t%s", orNone(h.CPUVendor))
	p("vCPUs:\t%d", h.VCPUCount)
	p("Memory:\t%s, %s memory file", size(h.MemorySize), h.MemoryKind)
	var off uint64
	for i, r := range h.Regions {
		p("  region %d:\tguest %#x-%#x (%s), file offset %#x", i, r.GuestAddr, r.GuestAddr+r.Size, size(r.Size), off)
		off += r.Size
	}
	states := make(map[string]int, len(s.Devices))
	for _, d := range s.Devices {
		states[d.Name] = len(d.Data)
	}
	if len(h.Devices) == 0 {
		p("Devices:\t(none)")
	} else {
		p("Devices:\t")
	}
	listed := make(map[string]bool, len(h.Devices))
	for _, d := range h.Devices {
		listed[d.Name] = true
		line := fmt.Sprintf("  %s\t%s", d.Name, d.Kind)
		if d.Backend != "" {
			line += "  " + d.Backend
		}
		if n, ok := states[d.Name]; ok {
			line += fmt.Sprintf("  (state %d bytes)", n)
		}
		p("%s", line)
	}
	for _, d := range s.Devices {
		if !listed[d.Name] {
			p("  %s\t(state only)  (state %d bytes)", d.Name, len(d.Data))
		}
	}
	clock := fmt.Sprintf("kvmclock %s", time.Duration(s.VM.Clock.Clock))
	if s.VM.Clock.Flags&kvm.ClockRealtime != 0 {
		clock += fmt.Sprintf(", wall clock %s (restore can advance the clock)", time.Unix(0, int64(s.VM.Clock.Realtime)).UTC().Format(time.RFC3339))
	} else {
		clock += ", no KVM wall-clock reference (clock_realtime advances it by the time since Created)"
	}
	p("Clock:\t%s", clock)
	pit := "no"
	if s.VM.PIT != nil {
		pit = "yes"
	}
	p("In-kernel PIT:\t%s", pit)
	for i := range s.VCPUs {
		v := &s.VCPUs[i]
		tsc := "TSC kHz unknown"
		if v.TSCKHz != 0 {
			tsc = fmt.Sprintf("TSC %d kHz", v.TSCKHz)
		}
		p("vCPU %d:\tRIP %#x, %s, %s, %d CPUID leaves, %d MSRs, XSAVE %d bytes",
			i, v.Regs.RIP, mpState(v.MPState.State), tsc, len(v.CPUID), len(v.MSRs), len(v.XSave))
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func mpState(s uint32) string {
	switch s {
	case kvm.MPStateRunnable:
		return "runnable"
	case kvm.MPStateUninitialized:
		return "uninitialized"
	case kvm.MPStateInitReceived:
		return "INIT received"
	case kvm.MPStateHalted:
		return "halted"
	case kvm.MPStateSIPIReceived:
		return "SIPI received"
	}
	return fmt.Sprintf("MP state %d", s)
}

// size formats a byte count with a binary unit.
func size(n uint64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 && n%(1<<(10*(u+1))) == 0 {
		v /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d bytes", n)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.0f", v), ".0") + " " + units[u]
}
