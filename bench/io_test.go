package bench

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/embervm/ember/vmm"
)

// TestIOGuestCmd: the guest command survives the kernel command line (no
// double quotes) and does not spell the report prefix the kernel would echo.
func TestIOGuestCmd(t *testing.T) {
	for _, withNet := range []bool{false, true} {
		c := ioGuestCmd(withNet)
		if strings.Contains(c, `"`) {
			t.Errorf("guest command holds a double quote: %s", c)
		}
		if strings.Contains(c, ioReportPrefix+": ") || strings.Contains(c, probeReportPrefix+": ") {
			t.Errorf("guest command holds a report prefix: %s", c)
		}
		if got := strings.Contains(c, "tcp-send"); got != withNet {
			t.Errorf("withNet=%v: guest command runs tcp-send: %v", withNet, got)
		}
	}
}

const sha = "4f1c"

// guestOutput is a guest's console as the kernel and the test init print it.
func guestOutput(withNet bool) string {
	cl := vmm.DefaultCmdline + ` ember_mode=cmd ember_cmd="` + ioGuestCmd(withNet) + `"`
	out := "[    0.000000] Command line: " + cl + "\n[    0.1] Kernel command line: " + cl + "\n" +
		"ember-guest: init reached\r\n" +
		"bench: vda_sectors=524288\r\n" +
		"bench: blk_read_s=3.2\r\n" +
		"bench: blk_write_s=4\r\n"
	if withNet {
		out += fmt.Sprintf("probe: sent=%d sha256=%s ms=8000\r\n", ioNetBytes, sha) +
			fmt.Sprintf("probe: received=%d sha256=%s ms=4000\r\n", ioNetBytes, sha)
	}
	return out + "ember-guest: cmd exit=0\r\n"
}

func TestParseGuestIO(t *testing.T) {
	full := transfer{bytes: ioNetBytes, sha256: sha}
	g, err := parseGuestIO(guestOutput(true), true)
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.sample(true, full, full)
	if err != nil {
		t.Fatal(err)
	}
	want := IOSample{ReadMiBs: 80, WriteMiBs: 50, TxGbits: float64(ioNetBytes) * 8 / 8e9, RxGbits: float64(ioNetBytes) * 8 / 4e9}
	if !near(s.ReadMiBs, want.ReadMiBs) || !near(s.WriteMiBs, want.WriteMiBs) || !near(s.TxGbits, want.TxGbits) || !near(s.RxGbits, want.RxGbits) {
		t.Errorf("sample = %+v, want %+v", s, want)
	}

	if g, err = parseGuestIO(guestOutput(false), false); err != nil {
		t.Fatal(err)
	}
	if s, err = g.sample(false, transfer{}, transfer{}); err != nil || !near(s.ReadMiBs, 80) || s.TxGbits != 0 {
		t.Errorf("block only: sample = %+v, %v", s, err)
	}
}

func TestParseGuestIOFailures(t *testing.T) {
	full := transfer{bytes: ioNetBytes, sha256: sha}
	for _, c := range []struct {
		name          string
		edit          func(string) string
		sink, source  transfer
		wantParseFail bool
	}{
		{"write failed", func(s string) string { return strings.Replace(s, "bench: blk_write_s=4\r\n", "", 1) }, full, full, true},
		{"zero time", func(s string) string { return strings.Replace(s, "blk_read_s=3.2", "blk_read_s=0", 1) }, full, full, true},
		{"probe error", func(s string) string { return s + "probe: error=\"recv: reset\"\n" }, full, full, true},
		{"no download", func(s string) string { return strings.Replace(s, "probe: received", "probe: x", 1) }, full, full, true},
		{"wrong disk", func(s string) string { return strings.Replace(s, "vda_sectors=524288", "vda_sectors=32768", 1) }, full, full, false},
		{"upload corrupt", func(s string) string { return s }, transfer{ioNetBytes, "beef"}, full, false},
		{"upload short", func(s string) string { return s }, transfer{ioNetBytes - 1, sha}, full, false},
		{"download short", func(s string) string { return s }, full, transfer{ioNetBytes - 1, ""}, false},
	} {
		g, err := parseGuestIO(c.edit(guestOutput(true)), true)
		if c.wantParseFail {
			if err == nil {
				t.Errorf("%s: parsed", c.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if _, err := g.sample(true, c.sink, c.source); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func TestIOLines(t *testing.T) {
	r := IOResult{Ember: IOSample{80, 50, 0.5, 0.4}, QEMU: IOSample{40, 50, 1, 0.2}, Runs: 3, Net: true}
	var b bytes.Buffer
	r.Lines(&b)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	wantTail := []string{
		"blk_read_ratio_vs_qemu 2.000 ratio", "blk_write_ratio_vs_qemu 1.000 ratio",
		"net_tx_ratio_vs_qemu 0.500 ratio", "net_rx_ratio_vs_qemu 2.000 ratio",
	}
	if len(lines) != 12 || !slices.Equal(lines[8:], wantTail) {
		t.Errorf("lines:\n%s", b.String())
	}
	for _, l := range []string{"blk_read_ember_mib_s 80.000 MiB/s", "net_rx_qemu_gbit_s 0.200 Gbit/s"} {
		if !slices.Contains(lines, l) {
			t.Errorf("no %q in\n%s", l, b.String())
		}
	}
	names := IOLineNames(true)
	for i, l := range lines {
		if strings.Fields(l)[0] != names[i] {
			t.Errorf("IOLineNames[%d] = %s, line %q", i, names[i], l)
		}
	}
	if n := IOLineNames(false); len(n) != 6 || slices.Contains(n, "net_tx_ratio_vs_qemu") {
		t.Errorf("IOLineNames(false) = %v", n)
	}
}

func TestMedianSample(t *testing.T) {
	m := medianSample([]IOSample{{1, 10, 5, 3}, {3, 30, 1, 1}, {2, 20, 3, 2}})
	if m != (IOSample{2, 20, 3, 2}) {
		t.Errorf("medianSample = %+v", m)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

func TestWithoutCmdline(t *testing.T) {
	out := "Command line: a ember_cmd=\"x\"\nember-guest: init reached\n  ember_cmd=x\nbench: x=1"
	if got := string(withoutCmdline([]byte(out))); got != "ember-guest: init reached\nbench: x=1" {
		t.Errorf("withoutCmdline = %q", got)
	}
}

func TestStopOn(t *testing.T) {
	stops := 0
	w := &stopOn{marker: []byte(kvmInternalError), stop: func() { stops++ }}
	for _, p := range []string{"boot\nKVM inte", "rnal error. Suberror: 1\n", "KVM internal error\n"} {
		w.Write([]byte(p))
	}
	if !w.seen || stops != 1 || !strings.HasPrefix(w.out.String(), "boot\nKVM internal error. Suberror") {
		t.Errorf("seen=%v stops=%d out=%q", w.seen, stops, w.out.String())
	}
}
