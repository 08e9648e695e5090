package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/embervm/ember/vmm"
)

// Bitmap formats of CPU template modifiers.
const (
	bitmapPrefix  = "0b"
	bitmapKeep    = 'x' // leave the bit as it is
	bitmapSep     = '_' // ignored, for readability
	cpuidRegBits  = 32
	msrBits       = 64
	kvmCapNegated = "!" // a kvm_capabilities entry to remove
)

// Number is a 32-bit unsigned number that Firecracker's CPU templates write
// as a string, in hex ("0x1f"), binary ("0b11111") or decimal ("31"); a
// plain JSON number is accepted too. It is written back in hex.
type Number uint32

// parseNumber reads a template number string.
func parseNumber(s string) (uint32, error) {
	base, digits := 10, s
	switch {
	case strings.HasPrefix(s, "0x"), strings.HasPrefix(s, "0X"):
		base, digits = 16, s[2:]
	case strings.HasPrefix(s, "0b"), strings.HasPrefix(s, "0B"):
		base, digits = 2, s[2:]
	}
	n, err := strconv.ParseUint(strings.ReplaceAll(digits, string(bitmapSep), ""), base, 32)
	if err != nil || digits == "" {
		return 0, fmt.Errorf("%q is not a 32-bit number (hex 0x.., binary 0b.. or decimal)", s)
	}
	return uint32(n), nil
}

// numberFrom reads a tree value (string or JSON number).
func numberFrom(v any) (uint32, error) {
	switch v := v.(type) {
	case string:
		return parseNumber(v)
	case json.Number:
		n, err := strconv.ParseUint(v.String(), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%s is not a 32-bit unsigned integer", v)
		}
		return uint32(n), nil
	}
	return 0, fmt.Errorf("invalid type: %s, expected a number or a numeric string", treeKind(v))
}

func (n *Number) checkShape(v any, path string) error {
	if _, err := numberFrom(v); err != nil {
		return fmt.Errorf("field %q: %w", path, err)
	}
	return nil
}

// UnmarshalJSON reads a number or a numeric string.
func (n *Number) UnmarshalJSON(b []byte) error {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	u, err := numberFrom(v)
	if err != nil {
		return err
	}
	*n = Number(u)
	return nil
}

// MarshalJSON writes the number as a hex string, as templates do.
func (n Number) MarshalJSON() ([]byte, error) {
	return json.Marshal(fmt.Sprintf("%#x", uint32(n)))
}

// CPUConfigSource is the "cpu-config" of a config file: either the path
// of a CPU template file (Firecracker's form) or the template inline.
type CPUConfigSource struct {
	Path     string
	Template *CpuConfig
}

func (s *CPUConfigSource) checkShape(v any, path string) error {
	switch v := v.(type) {
	case string:
		return nil
	case map[string]any:
		return checkObject(reflect.TypeFor[CpuConfig](), v, path)
	}
	return wrongType(path, v, "a file path or a CPU template object")
}

// UnmarshalJSON reads a path string or a template object (strictly).
func (s *CPUConfigSource) UnmarshalJSON(b []byte) error {
	var path string
	if err := json.Unmarshal(b, &path); err == nil {
		*s = CPUConfigSource{Path: path}
		return nil
	}
	var t CpuConfig
	if err := decodeStrict(b, &t); err != nil {
		return err
	}
	*s = CPUConfigSource{Template: &t}
	return nil
}

// MarshalJSON writes the template, or the path when there is none.
func (s CPUConfigSource) MarshalJSON() ([]byte, error) {
	if s.Template != nil {
		return json.Marshal(s.Template)
	}
	return json.Marshal(s.Path)
}

// toVMM validates the template and converts it for the VMM. Errors name
// the modifier at fault.
func (c *CpuConfig) toVMM() (*vmm.CPUConfig, error) {
	if len(c.RegModifiers) > 0 {
		return nil, errors.New("reg_modifiers: aarch64 only; Ember runs x86_64 guests")
	}
	if len(c.VCPUFeatures) > 0 {
		return nil, errors.New("vcpu_features: aarch64 only; Ember runs x86_64 guests")
	}
	out := &vmm.CPUConfig{}
	for i, kc := range c.KVMCapabilities {
		if _, err := strconv.ParseUint(strings.TrimPrefix(kc, kvmCapNegated), 10, 32); err != nil {
			return nil, fmt.Errorf("kvm_capabilities[%d]: %q: want a capability number, or ! and a number to remove it", i, kc)
		}
		out.KVMCapabilities = append(out.KVMCapabilities, kc)
	}
	for i, leaf := range c.CPUIDModifiers {
		m := vmm.CPUIDModifier{Leaf: uint32(leaf.Leaf), Subleaf: uint32(leaf.Subleaf), Flags: leaf.Flags}
		for j, r := range leaf.Modifiers {
			path := fmt.Sprintf("cpuid_modifiers[%d].modifiers[%d]", i, j)
			if !isCPUIDRegister(r.Register) {
				return nil, fmt.Errorf("%s.register: %q: want eax, ebx, ecx or edx", path, r.Register)
			}
			mask, value, err := parseBitmap(r.Bitmap, cpuidRegBits)
			if err != nil {
				return nil, fmt.Errorf("%s.bitmap: %w", path, err)
			}
			m.Registers = append(m.Registers, vmm.RegisterModifier{Register: r.Register, Mask: uint32(mask), Value: uint32(value)})
		}
		out.CPUID = append(out.CPUID, m)
	}
	for i, msr := range c.MSRModifiers {
		mask, value, err := parseBitmap(msr.Bitmap, msrBits)
		if err != nil {
			return nil, fmt.Errorf("msr_modifiers[%d].bitmap: %w", i, err)
		}
		out.MSRs = append(out.MSRs, vmm.MSRModifier{Addr: uint32(msr.Addr), Mask: mask, Value: value})
	}
	return out, nil
}

// isCPUIDRegister reports whether name is a CPUID register.
func isCPUIDRegister(name string) bool {
	switch name {
	case "eax", "ebx", "ecx", "edx":
		return true
	}
	return false
}

// parseBitmap reads "0b" and bits characters of 0, 1 or x, most
// significant first (underscores ignored): mask has the bits to set, value
// their new values.
func parseBitmap(s string, bits int) (mask, value uint64, err error) {
	digits, ok := strings.CutPrefix(s, bitmapPrefix)
	digits = strings.ReplaceAll(digits, string(bitmapSep), "")
	if !ok || len(digits) != bits {
		return 0, 0, fmt.Errorf("%q: want %q and %d characters of 0, 1 or x", s, bitmapPrefix, bits)
	}
	for i := range bits {
		bit := uint64(1) << (bits - 1 - i)
		switch digits[i] {
		case '1':
			mask |= bit
			value |= bit
		case '0':
			mask |= bit
		case bitmapKeep:
		default:
			return 0, 0, fmt.Errorf("%q: character %q: want 0, 1 or x", s, digits[i])
		}
	}
	return mask, value, nil
}

// formatBitmap is parseBitmap's inverse.
func formatBitmap(mask, value uint64, bits int) string {
	var sb strings.Builder
	sb.WriteString(bitmapPrefix)
	for i := range bits {
		bit := uint64(1) << (bits - 1 - i)
		switch {
		case mask&bit == 0:
			sb.WriteByte(bitmapKeep)
		case value&bit != 0:
			sb.WriteByte('1')
		default:
			sb.WriteByte('0')
		}
	}
	return sb.String()
}

// cpuConfigOf converts the VMM's template back to the API's form.
func cpuConfigOf(c *vmm.CPUConfig) *CpuConfig {
	out := &CpuConfig{KVMCapabilities: c.KVMCapabilities}
	for _, m := range c.CPUID {
		leaf := CpuidLeafModifier{Leaf: Number(m.Leaf), Subleaf: Number(m.Subleaf), Flags: m.Flags,
			Modifiers: []CpuidRegisterModifier{}}
		for _, r := range m.Registers {
			leaf.Modifiers = append(leaf.Modifiers, CpuidRegisterModifier{Register: r.Register,
				Bitmap: formatBitmap(uint64(r.Mask), uint64(r.Value), cpuidRegBits)})
		}
		out.CPUIDModifiers = append(out.CPUIDModifiers, leaf)
	}
	for _, m := range c.MSRs {
		out.MSRModifiers = append(out.MSRModifiers, MsrModifier{Addr: Number(m.Addr),
			Bitmap: formatBitmap(m.Mask, m.Value, msrBits)})
	}
	return out
}
