package acpi

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// These tests check the tables with iasl (ACPICA's compiler/disassembler,
// Debian's acpica-tools): each table Build lays out, found by walking the
// pointers from the RSDP, is disassembled with iasl -d and compiled back.

// iaslDefault is where Debian's acpica-tools installs iasl.
const iaslDefault = "/usr/bin/iasl"

// iaslProblem matches iasl output lines that report a problem: "Error",
// "ACPI Error", "Firmware Warning (ACPI): Incorrect checksum ...",
// "ACPI Warning: Invalid character(s) in name ...".
var iaslProblem = regexp.MustCompile(`(?i)\b(errors?|warnings?|incorrect|invalid|corrupt)\b`)

// iaslSummary matches the compiler's summary line, the one line that says
// "Errors" and "Warnings" when there are none.
var iaslSummary = regexp.MustCompile(`Compilation successful\. (\d+) Errors, (\d+) Warnings`)

// iasl returns the path of iasl, failing the test if it is not installed.
func iasl(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("iasl"); err == nil {
		return p
	}
	if _, err := os.Stat(iaslDefault); err == nil {
		return iaslDefault
	}
	t.Fatalf("iasl not found in $PATH or at %s: run `make setup` to install Debian's acpica-tools", iaslDefault)
	return ""
}

// runIASL runs iasl with args in dir and returns its output, or an error if
// it exits non-zero or reports any error or warning.
func runIASL(bin, dir string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		return text, fmt.Errorf("iasl %s: %w\n%s", strings.Join(args, " "), err, text)
	}
	for _, line := range strings.Split(text, "\n") {
		if m := iaslSummary.FindStringSubmatch(line); m != nil {
			if m[1] != "0" || m[2] != "0" {
				return text, fmt.Errorf("iasl %s: %s\n%s", strings.Join(args, " "), line, text)
			}
			continue
		}
		if iaslProblem.MatchString(line) {
			return text, fmt.Errorf("iasl %s reports %q\n%s", strings.Join(args, " "), line, text)
		}
	}
	return text, nil
}

// disassemble writes table to dir/name.dat, disassembles it with iasl -d,
// and returns the ASL (name.dsl), failing on any problem iasl reports in its
// output or in the ASL ("Incorrect checksum" is only a comment there).
func disassemble(bin, dir, name string, table []byte) (string, error) {
	if err := os.WriteFile(filepath.Join(dir, name+".dat"), table, 0o644); err != nil {
		return "", err
	}
	if _, err := runIASL(bin, dir, "-d", name+".dat"); err != nil {
		return "", err
	}
	dsl, err := os.ReadFile(filepath.Join(dir, name+".dsl"))
	if err != nil {
		return "", fmt.Errorf("iasl -d %s.dat wrote no ASL: %w", name, err)
	}
	for _, line := range strings.Split(string(dsl), "\n") {
		if iaslProblem.MatchString(line) || strings.Contains(line, "****") {
			return string(dsl), fmt.Errorf("iasl -d %s.dat: %q", name, strings.TrimSpace(line))
		}
	}
	return string(dsl), nil
}

// recompile compiles dir/name.dsl (from disassemble) with iasl and returns
// the table it produces (name.aml).
func recompile(bin, dir, name string) ([]byte, error) {
	if _, err := runIASL(bin, dir, name+".dsl"); err != nil {
		return nil, err
	}
	aml, err := os.ReadFile(filepath.Join(dir, name+".aml"))
	if err != nil {
		return nil, fmt.Errorf("iasl %s.dsl wrote no table: %w", name, err)
	}
	return aml, nil
}

// rsdpSource is the RSDP as iasl data-table source, checksums left 0 for
// iasl to compute. ACPICA cannot load a bare RSDP from a file ("Loading an
// RSDP is not supported", acfileio.c), so instead of disassembling ours,
// iasl compiles the same fields and the test compares the bytes.
func rsdpSource(r []byte) string {
	return fmt.Sprintf(`[0008]                          Signature : "%s"
[0001]                           Checksum : 00
[0006]                             Oem ID : "%s"
[0001]                           Revision : %02X
[0004]                       RSDT Address : %08X
[0004]                             Length : %08X
[0008]                       XSDT Address : %016X
[0001]                  Extended Checksum : 00
[0003]                           Reserved : 000000
`, r[0:8], r[9:15], r[15], u32(r, 16), u32(r, 20), u64(r, 24))
}

func TestIASL(t *testing.T) {
	bin := iasl(t)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"minimal", Config{CPUs: 1}},
		{"typical", Config{CPUs: 2, Serial: true, I8042: true, VirtioMMIO: virtioDevices(3)}},
		{"maximal", Config{CPUs: 32, Serial: true, I8042: true, VirtioMMIO: virtioDevices(19), VMGenID: &VMGenID{Addr: 0xef000, GSI: 3}}},
		{"vmgenid", Config{CPUs: 2, Serial: true, I8042: true, VirtioMMIO: virtioDevices(2), VMGenID: &VMGenID{Addr: 0x1_2345_6780, GSI: 9}}},
		{"sparse", Config{CPUs: 5, I8042: true, VirtioMMIO: []MMIODevice{
			{Addr: 0xd0000000, Size: 0x200, IRQ: 23},
			{Addr: 0xfebff000, Size: 0x1000, IRQ: 9},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := mustBuild(t, tc.cfg)
			dir := t.TempDir()

			// The RSDP: iasl compiles the same fields to the same bytes.
			if err := os.WriteFile(filepath.Join(dir, "rsdp.asl"), []byte(rsdpSource(ts.rsdp)), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := runIASL(bin, dir, "rsdp.asl"); err != nil {
				t.Fatal(err)
			}
			if r, err := os.ReadFile(filepath.Join(dir, "rsdp.aml")); err != nil || !bytes.Equal(r, ts.rsdp) {
				t.Errorf("RSDP:\n ours % x\niasl % x (%v)", ts.rsdp, r, err)
			}

			dsl := map[string]string{}
			for _, sig := range []string{"XSDT", "FACP", "APIC", "DSDT"} {
				asl, err := disassemble(bin, dir, sig, ts.tables[sig])
				if err != nil {
					t.Fatal(err)
				}
				dsl[sig] = asl
				aml, err := recompile(bin, dir, sig)
				if err != nil {
					t.Fatal(err)
				}
				// Data tables come back byte for byte, but for the creator
				// ID and revision (iasl puts its own) and so the checksum
				// (which disassemble checked). The DSDT differs (iasl writes
				// _SB_ for our \_SB_ and 0 for the End Tag checksums) but
				// must compile cleanly.
				if sig != "DSDT" && !bytes.Equal(maskCreator(aml), maskCreator(ts.tables[sig])) {
					t.Errorf("%s recompiled by iasl:\n ours % x\niasl % x", sig, ts.tables[sig], aml)
				}
			}
			checkXSDTASL(t, dsl["XSDT"], ts)
			checkFADTASL(t, dsl["FACP"], ts, tc.cfg)
			checkMADTASL(t, dsl["APIC"], tc.cfg)
			checkDSDTASL(t, dsl["DSDT"], tc.cfg)
		})
	}
}

// maskCreator returns a copy of table with the checksum, creator ID and
// creator revision zeroed.
func maskCreator(table []byte) []byte {
	m := append([]byte{}, table...)
	if len(m) >= headerSize {
		m[hdrChecksum] = 0
		clear(m[hdrCreatorID:headerSize])
	}
	return m
}

// field matches a data table disassembly line "FieldName : Value".
func field(name, value string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^\[[0-9A-F]+h [0-9]+ +[0-9]+\] +` + regexp.QuoteMeta(name) + ` : ` + value + `(\s|$)`)
}

// hasFields fails the test for each field line missing from asl.
func hasFields(t *testing.T, table, asl string, fields ...*regexp.Regexp) {
	t.Helper()
	for _, f := range fields {
		if !f.MatchString(asl) {
			t.Errorf("%s disassembly has no line matching %s:\n%s", table, f, asl)
		}
	}
}

func checkXSDTASL(t *testing.T, asl string, ts *tableSet) {
	hasFields(t, "XSDT", asl,
		field("ACPI Table Address   0", fmt.Sprintf("%016X", ts.addr["FACP"])),
		field("ACPI Table Address   1", fmt.Sprintf("%016X", ts.addr["APIC"])),
	)
}

func checkFADTASL(t *testing.T, asl string, ts *tableSet, cfg Config) {
	i8042 := "0"
	if cfg.I8042 {
		i8042 = "1"
	}
	flag := func(name, v string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^ +` + regexp.QuoteMeta(name) + ` : ` + v + `$`)
	}
	hasFields(t, "FADT", asl,
		field("Revision", "06"),
		field("FADT Minor Revision", "04"),
		field("DSDT Address", fmt.Sprintf("%08X", ts.addr["DSDT"])),
		field("DSDT Address", fmt.Sprintf("%016X", ts.addr["DSDT"])),
		flag("Hardware Reduced (V5)", "1"),
		flag("Control Method Power Button (V1)", "1"),
		flag("Control Method Sleep Button (V1)", "1"),
		flag("8042 Present on ports 60/64 (V2)", i8042),
		flag("VGA Not Present (V4)", "1"),
		flag("CMOS RTC Not Present (V5)", "1"),
	)
}

func checkMADTASL(t *testing.T, asl string, cfg Config) {
	if n := strings.Count(asl, "Subtable Type : 00 [Processor Local APIC]"); n != cfg.CPUs {
		t.Errorf("MADT disassembly has %d local APICs, want %d", n, cfg.CPUs)
	}
	if n := strings.Count(asl, "Processor Enabled : 1"); n != cfg.CPUs {
		t.Errorf("MADT disassembly has %d enabled processors, want %d", n, cfg.CPUs)
	}
	hasFields(t, "MADT", asl,
		field("Local Apic Address", "FEE00000"),
		field("Local Apic ID", fmt.Sprintf("%02X", cfg.CPUs-1)),
		field("Subtable Type", `01 \[I/O APIC\]`),
		field("I/O Apic ID", fmt.Sprintf("%02X", cfg.CPUs)),
		field("Address", "FEC00000"),
		field("Subtable Type", `02 \[Interrupt Source Override\]`),
		field("Interrupt", "00000000"),
	)
	if !strings.Contains(asl, "PC-AT Compatibility : 1") {
		t.Errorf("MADT disassembly lacks PC-AT Compatibility : 1:\n%s", asl)
	}
}

func checkDSDTASL(t *testing.T, asl string, cfg Config) {
	want := func(present bool, what string, re *regexp.Regexp) {
		t.Helper()
		if re.MatchString(asl) != present {
			t.Errorf("DSDT disassembly: %s present %v, want %v:\n%s", what, !present, present, asl)
		}
	}
	want(cfg.Serial, "COM1", regexp.MustCompile(`Device \(COM1\)\s*\{\s*Name \(_HID, EisaId \("PNP0501"\)[^\n]*\n\s*Name \(_UID, Zero\)`+
		`[^\n]*\n\s*Name \(_CRS, ResourceTemplate \(\)[^\n]*\n\s*\{\s*IO \(Decode16,\s*0x03F8,[^\n]*\n\s*0x03F8,[^\n]*\n\s*0x00,[^\n]*\n\s*0x08,`+
		`[^\n]*\n\s*\)\s*IRQNoFlags \(\)\s*\{4\}`))
	want(cfg.I8042, "PS/2", regexp.MustCompile(`Device \(PS2\)\s*\{\s*Name \(_HID, EisaId \("PNP0303"\)[^\n]*\n\s*Name \(_CRS, ResourceTemplate \(\)`+
		`[^\n]*\n\s*\{\s*IO \(Decode16,\s*0x0060,[^\n]*\n\s*0x0060,[^\n]*\n\s*0x01,[^\n]*\n\s*0x01,[^\n]*\n\s*\)`+
		`\s*IO \(Decode16,\s*0x0064,[^\n]*\n\s*0x0064,[^\n]*\n\s*0x01,[^\n]*\n\s*0x01,[^\n]*\n\s*\)\s*IRQNoFlags \(\)\s*\{1\}`))
	if n := strings.Count(asl, `Name (_HID, "LNRO0005")`); n != len(cfg.VirtioMMIO) {
		t.Errorf("DSDT disassembly has %d LNRO0005 devices, want %d", n, len(cfg.VirtioMMIO))
	}
	for i, d := range cfg.VirtioMMIO {
		uid := map[int]string{0: "Zero", 1: "One"}[i]
		if uid == "" {
			uid = fmt.Sprintf("0x%02X", i)
		}
		re := fmt.Sprintf(`Device \(V%03d\)\s*\{\s*Name \(_HID, "LNRO0005"\)[^\n]*\n\s*Name \(_UID, %s\)[^\n]*\n\s*Name \(_CCA, One\)`+
			`[^\n]*\n\s*Name \(_CRS, ResourceTemplate \(\)[^\n]*\n\s*\{\s*Memory32Fixed \(ReadWrite,\s*0x%08X,[^\n]*\n\s*0x%08X,[^\n]*\n\s*\)`+
			`\s*Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x%08X,\s*\}`,
			i, uid, d.Addr, d.Size, d.IRQ)
		want(true, fmt.Sprintf("V%03d (%#x+%#x, IRQ %d)", i, d.Addr, d.Size, d.IRQ), regexp.MustCompile(re))
	}
	g := cfg.VMGenID
	if g == nil {
		g = &VMGenID{}
	}
	want(cfg.VMGenID != nil, "VGEN", regexp.MustCompile(`Device \(VGEN\)\s*\{\s*Name \(_HID, "EMBR0001"\)[^\n]*\n\s*Name \(_CID, "VM_Gen_Counter"\)`+
		`[^\n]*\n\s*Name \(_DDN, "VM_Gen_Counter"\)[^\n]*\n\s*Name \(ADDR, Package \(0x02\)\s*\{\s*`+
		aslInt(g.Addr&0xffffffff)+`,\s*`+aslInt(g.Addr>>32)+`\s*\}\)`))
	want(cfg.VMGenID != nil, "GED", regexp.MustCompile(`Device \(GED\)\s*\{\s*Name \(_HID, "ACPI0013"[^)]*\)[^\n]*\n\s*Name \(_UID, Zero\)`+
		`[^\n]*\n\s*Name \(_CRS, ResourceTemplate \(\)[^\n]*\n\s*\{\s*Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*`+
		fmt.Sprintf("0x%08X", g.GSI)+`,\s*\}\s*\}\)\s*Method \(_EVT, 1, Serialized\)[^\n]*\n\s*\{\s*If \(\(Arg0 == `+aslInt(uint64(g.GSI))+
		`\)\)\s*\{\s*Notify \(\\_SB\.VGEN, 0x80\)`))
}

// aslInt is how iasl -d prints an integer constant.
func aslInt(v uint64) string {
	switch {
	case v == 0:
		return "Zero"
	case v == 1:
		return "One"
	case v <= 0xff:
		return fmt.Sprintf("0x%02X", v)
	case v <= 0xffff:
		return fmt.Sprintf("0x%04X", v)
	case v <= 0xffffffff:
		return fmt.Sprintf("0x%08X", v)
	}
	return fmt.Sprintf("0x%016X", v)
}

// TestIASLCatchesBadTables makes sure the checks above would notice a bad
// table: iasl exits 0 on a bad checksum and on AML it can only partly
// decode, saying so in its output or in the ASL.
func TestIASLCatchesBadTables(t *testing.T) {
	bin := iasl(t)
	ts := mustBuild(t, Config{CPUs: 2, Serial: true, VirtioMMIO: virtioDevices(1)})
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		sig  string
		off  int
		b    byte
	}{
		{"MADT checksum", "APIC", hdrChecksum, 0},
		{"DSDT AML name", "DSDT", headerSize + 12, 0xee}, // inside Device (COM1)'s name
	} {
		bad := append([]byte{}, ts.tables[tc.sig]...)
		bad[tc.off] ^= tc.b | 1
		if tc.off != hdrChecksum {
			bad[hdrChecksum] = 0
			bad[hdrChecksum] = checksum(bad)
		}
		_, err := disassemble(bin, dir, "bad"+strconv.Itoa(tc.off), bad)
		if err == nil {
			t.Errorf("%s: a corrupted table passes the iasl check", tc.name)
		}
	}
	if _, err := runIASL(bin, dir, "-d", "missing.dat"); err == nil {
		t.Error("iasl on a missing file passes the iasl check")
	}
	var exitErr *exec.ExitError
	if _, err := runIASL(bin, dir, "-d", "missing.dat"); !errors.As(err, &exitErr) {
		t.Errorf("iasl on a missing file: %v, want its exit status", err)
	}
}
