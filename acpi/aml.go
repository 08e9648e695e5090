package acpi

import (
	"fmt"
	"strings"
)

// A small AML encoder: just the terms the DSDT needs. Each function returns
// the encoded bytes of one term; the ones that take names, strings or
// lengths that can be out of range also return an error instead of
// panicking.

// AML opcodes and prefixes (ACPI 20.2, "AML Grammar Definition").
const (
	// Data objects (ACPI 20.2.3, "Data Objects Encoding").
	amlZeroOp       = 0x00 // ZeroOp: the integer 0
	amlOneOp        = 0x01 // OneOp: the integer 1
	amlOnesOp       = 0xff // OnesOp: all bits set (64 bits in a revision 2 DSDT)
	amlBytePrefix   = 0x0a // BytePrefix ByteData
	amlWordPrefix   = 0x0b // WordPrefix WordData
	amlDWordPrefix  = 0x0c // DWordPrefix DWordData
	amlStringPrefix = 0x0d // StringPrefix AsciiCharList NullChar
	amlQWordPrefix  = 0x0e // QWordPrefix QWordData

	// Name objects (ACPI 20.2.2, "Name Objects Encoding").
	amlRootChar        = '\\' // RootChar
	amlParentPrefix    = '^'  // ParentPrefixChar
	amlDualNamePrefix  = 0x2e // DualNamePrefix NameSeg NameSeg
	amlMultiNamePrefix = 0x2f // MultiNamePrefix SegCount NameSeg(SegCount)
	amlNamePad         = '_'  // NameSeg padding character

	// Namespace modifier objects (ACPI 20.2.5.1).
	amlNameOp  = 0x08 // DefName := NameOp NameString DataRefObject
	amlScopeOp = 0x10 // DefScope := ScopeOp PkgLength NameString TermList

	// Named objects (ACPI 20.2.5.2).
	amlExtOpPrefix = 0x5b // ExtOpPrefix
	amlDeviceOp    = 0x82 // DefDevice := DeviceOp PkgLength NameString TermList; DeviceOp := ExtOpPrefix 0x82

	// Named objects (ACPI 20.2.5.2).
	amlMethodOp = 0x14 // DefMethod := MethodOp PkgLength NameString MethodFlags TermList

	// Statement opcodes (ACPI 20.2.5.3).
	amlIfOp     = 0xa0 // DefIfElse := IfOp PkgLength Predicate TermList DefElse
	amlNotifyOp = 0x86 // DefNotify := NotifyOp NotifyObject NotifyValue

	// Expression opcodes (ACPI 20.2.5.4).
	amlBufferOp  = 0x11 // DefBuffer := BufferOp PkgLength BufferSize ByteList
	amlPackageOp = 0x12 // DefPackage := PackageOp PkgLength NumElements PackageElementList
	amlLEqualOp  = 0x93 // DefLEqual := LequalOp Operand Operand

	// Arg objects (ACPI 20.2.6.1).
	amlArg0Op = 0x68

	// MethodFlags (ACPI 20.2.5.2): bits 0-2 ArgCount, bit 3 SerializeFlag.
	amlMethodArgsMask  = 0x07
	amlMethodSerialize = 0x08
)

// maxPackageElements is the most elements a Package's NumElements (a
// ByteData) counts.
const maxPackageElements = 255

// Package length encoding (ACPI 20.2.4, "Package Length Encoding").
const (
	// pkgLen1Max is the largest length a one-byte PkgLength holds (bits 0-5).
	pkgLen1Max = 0x3f
	// pkgLen2Max, pkgLen3Max and pkgLen4Max are the largest lengths that two,
	// three and four bytes hold: 4 bits in the lead byte, 8 in each other.
	pkgLen2Max = 1<<12 - 1
	pkgLen3Max = 1<<20 - 1
	pkgLen4Max = 1<<28 - 1
	// pkgLenCountShift is where the lead byte holds the number of bytes
	// that follow it (bits 6-7).
	pkgLenCountShift = 6
	// pkgLenLeadNibble masks the length bits of a multi-byte lead byte.
	pkgLenLeadNibble = 0x0f
)

// nameSegLen is the length of a NameSeg (ACPI 20.2.2): four characters,
// padded with '_'.
const nameSegLen = 4

// maxNameSegs is the largest SegCount of a MultiNamePrefix path (a ByteData).
const maxNameSegs = 255

// EISA ID compression (ACPI 19.6, "EISAID", and 6.1.5 "_HID"): three
// upper-case letters, five bits each ('A' is 1), then four hex digits.
const (
	eisaIDLen        = 7
	eisaIDVendorLen  = 3
	eisaIDLetterBias = 0x40 // 'A' - 1
)

// pkgLength encodes the PkgLength of a package whose contents (everything
// after the PkgLength) are n bytes long. The encoded length counts the
// PkgLength bytes themselves.
func pkgLength(n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("AML package length %d is negative", n)
	}
	if n+1 <= pkgLen1Max {
		return []byte{byte(n + 1)}, nil
	}
	var total, follow int
	switch {
	case n+2 <= pkgLen2Max:
		total, follow = n+2, 1
	case n+3 <= pkgLen3Max:
		total, follow = n+3, 2
	case n+4 <= pkgLen4Max:
		total, follow = n+4, 3
	default:
		return nil, fmt.Errorf("AML package of %d bytes is longer than PkgLength allows (%d)", n, pkgLen4Max-4)
	}
	b := make([]byte, 1+follow)
	b[0] = byte(follow<<pkgLenCountShift | total&pkgLenLeadNibble)
	for i := 1; i <= follow; i++ {
		b[i] = byte(total >> (4 + 8*(i-1)))
	}
	return b, nil
}

// nameSeg encodes one NameSeg: a lead character 'A'-'Z' or '_', then up to
// three characters 'A'-'Z', '0'-'9' or '_', padded with '_' (ACPI 20.2.2).
func nameSeg(s string) ([]byte, error) {
	if len(s) == 0 || len(s) > nameSegLen {
		return nil, fmt.Errorf("AML NameSeg %q: want 1 to %d characters", s, nameSegLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return nil, fmt.Errorf("AML NameSeg %q: invalid character %q at %d", s, c, i)
		}
	}
	b := []byte(s)
	for len(b) < nameSegLen {
		b = append(b, amlNamePad)
	}
	return b, nil
}

// nameString encodes a NameString (ACPI 20.2.2): an optional '\' (root) or
// run of '^' (parent) prefixes, then NameSegs separated by '.', e.g.
// "\_SB", "COM1", "^^_SB.V000".
func nameString(path string) ([]byte, error) {
	var b []byte
	rest := path
	if len(rest) > 0 && rest[0] == amlRootChar {
		b = append(b, amlRootChar)
		rest = rest[1:]
	} else {
		for len(rest) > 0 && rest[0] == amlParentPrefix {
			b = append(b, amlParentPrefix)
			rest = rest[1:]
		}
	}
	if rest == "" {
		return nil, fmt.Errorf("AML NameString %q has no NameSeg", path)
	}
	parts := strings.Split(rest, ".")
	if len(parts) > maxNameSegs {
		return nil, fmt.Errorf("AML NameString %q: %d NameSegs, at most %d", path, len(parts), maxNameSegs)
	}
	switch len(parts) {
	case 1:
	case 2:
		b = append(b, amlDualNamePrefix)
	default:
		b = append(b, amlMultiNamePrefix, byte(len(parts)))
	}
	for _, p := range parts {
		seg, err := nameSeg(p)
		if err != nil {
			return nil, fmt.Errorf("AML NameString %q: %w", path, err)
		}
		b = append(b, seg...)
	}
	return b, nil
}

// amlInteger encodes v as a ComputationalData integer in the fewest bytes
// (ACPI 20.2.3): ZeroOp, OneOp, OnesOp (the DSDT is revision 2, so Ones is
// 64 bits), or a Byte/Word/DWord/QWord prefix and the little-endian value.
func amlInteger(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v == ^uint64(0):
		return []byte{amlOnesOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return []byte{amlWordPrefix, byte(v), byte(v >> 8)}
	case v <= 0xffffffff:
		return []byte{amlDWordPrefix, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
	b := []byte{amlQWordPrefix}
	for i := range 8 {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}

// amlString encodes a String (ACPI 20.2.3): StringPrefix, ASCII characters
// 0x01-0x7F, NUL.
func amlString(s string) ([]byte, error) {
	b := make([]byte, 0, len(s)+2)
	b = append(b, amlStringPrefix)
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] > 0x7f {
			return nil, fmt.Errorf("AML String %q: byte %#x at %d is not ASCII 0x01-0x7F", s, s[i], i)
		}
		b = append(b, s[i])
	}
	return append(b, 0), nil
}

// eisaID compresses a seven-character EISA ID such as "PNP0501" into its
// 32-bit form (the ASL EISAID macro, ACPI 19.6): byte 0 holds letter 1
// and the top two bits of letter 2, byte 1 the rest of letter 2 and letter
// 3, bytes 2 and 3 the hex digits in order.
func eisaID(id string) (uint32, error) {
	if len(id) != eisaIDLen {
		return 0, fmt.Errorf("EISA ID %q: want %d characters", id, eisaIDLen)
	}
	var l [eisaIDVendorLen]uint32
	for i := range eisaIDVendorLen {
		c := id[i]
		if c < 'A' || c > 'Z' {
			return 0, fmt.Errorf("EISA ID %q: character %d is not an upper-case letter", id, i)
		}
		l[i] = uint32(c - eisaIDLetterBias)
	}
	var digits uint32
	for i := eisaIDVendorLen; i < eisaIDLen; i++ {
		c := id[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("EISA ID %q: character %d is not an upper-case hex digit", id, i)
		}
		digits = digits<<4 | uint32(d)
	}
	b0 := l[0]<<2 | l[1]>>3
	b1 := (l[1]&7)<<5 | l[2]
	b2 := digits >> 8
	b3 := digits & 0xff
	return b0 | b1<<8 | b2<<16 | b3<<24, nil
}

// amlEISAID encodes an EISA ID as a DWord integer. Like iasl's EISAID it
// always uses DWordPrefix, which is what disassemblers look for to print it
// back as EisaId (...).
func amlEISAID(id string) ([]byte, error) {
	v, err := eisaID(id)
	if err != nil {
		return nil, err
	}
	return []byte{amlDWordPrefix, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}, nil
}

// amlName encodes Name(name, obj) (ACPI 20.2.5.1): obj is an encoded
// DataRefObject (integer, string, buffer).
func amlName(name string, obj []byte) ([]byte, error) {
	n, err := nameString(name)
	if err != nil {
		return nil, fmt.Errorf("Name: %w", err)
	}
	b := append([]byte{amlNameOp}, n...)
	return append(b, obj...), nil
}

// amlPackage encodes op, a PkgLength, then the contents (the shape of
// Scope, Device and Buffer).
func amlPackage(op []byte, contents ...[]byte) ([]byte, error) {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	pl, err := pkgLength(n)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(op)+len(pl)+n)
	b = append(b, op...)
	b = append(b, pl...)
	for _, c := range contents {
		b = append(b, c...)
	}
	return b, nil
}

// amlScope encodes Scope(name) { terms } (ACPI 20.2.5.1).
func amlScope(name string, terms ...[]byte) ([]byte, error) {
	n, err := nameString(name)
	if err != nil {
		return nil, fmt.Errorf("Scope: %w", err)
	}
	b, err := amlPackage([]byte{amlScopeOp}, append([][]byte{n}, terms...)...)
	if err != nil {
		return nil, fmt.Errorf("Scope(%s): %w", name, err)
	}
	return b, nil
}

// amlDevice encodes Device(name) { terms } (ACPI 20.2.5.2).
func amlDevice(name string, terms ...[]byte) ([]byte, error) {
	n, err := nameString(name)
	if err != nil {
		return nil, fmt.Errorf("Device: %w", err)
	}
	b, err := amlPackage([]byte{amlExtOpPrefix, amlDeviceOp}, append([][]byte{n}, terms...)...)
	if err != nil {
		return nil, fmt.Errorf("Device(%s): %w", name, err)
	}
	return b, nil
}

// amlBuffer encodes Buffer() { data } (ACPI 20.2.5.4): the BufferSize is
// the integer len(data).
func amlBuffer(data []byte) ([]byte, error) {
	b, err := amlPackage([]byte{amlBufferOp}, amlInteger(uint64(len(data))), data)
	if err != nil {
		return nil, fmt.Errorf("Buffer: %w", err)
	}
	return b, nil
}

// amlPackageOf encodes Package() { elements } (ACPI 20.2.5.4), each element
// an encoded data object (integer, string, ...).
func amlPackageOf(elements ...[]byte) ([]byte, error) {
	if len(elements) > maxPackageElements {
		return nil, fmt.Errorf("Package: %d elements, at most %d", len(elements), maxPackageElements)
	}
	b, err := amlPackage([]byte{amlPackageOp}, append([][]byte{{byte(len(elements))}}, elements...)...)
	if err != nil {
		return nil, fmt.Errorf("Package: %w", err)
	}
	return b, nil
}

// amlMethod encodes Method(name, args, Serialized or NotSerialized) { terms }
// (ACPI 20.2.5.2).
func amlMethod(name string, args int, serialized bool, terms ...[]byte) ([]byte, error) {
	if args < 0 || args > amlMethodArgsMask {
		return nil, fmt.Errorf("Method(%s): %d arguments, at most %d", name, args, amlMethodArgsMask)
	}
	n, err := nameString(name)
	if err != nil {
		return nil, fmt.Errorf("Method: %w", err)
	}
	flags := byte(args)
	if serialized {
		flags |= amlMethodSerialize
	}
	b, err := amlPackage([]byte{amlMethodOp}, append([][]byte{n, {flags}}, terms...)...)
	if err != nil {
		return nil, fmt.Errorf("Method(%s): %w", name, err)
	}
	return b, nil
}

// amlIf encodes If(predicate) { terms } without an Else (ACPI 20.2.5.3).
func amlIf(predicate []byte, terms ...[]byte) ([]byte, error) {
	b, err := amlPackage([]byte{amlIfOp}, append([][]byte{predicate}, terms...)...)
	if err != nil {
		return nil, fmt.Errorf("If: %w", err)
	}
	return b, nil
}

// amlLEqual encodes LEqual(a, b) (ACPI 20.2.5.4): a and b encoded operands.
func amlLEqual(a, b []byte) []byte {
	out := append([]byte{amlLEqualOp}, a...)
	return append(out, b...)
}

// amlArg0 is the method's first argument, Arg0 (ACPI 20.2.6.1).
func amlArg0() []byte { return []byte{amlArg0Op} }

// amlNotify encodes Notify(path, value) (ACPI 20.2.5.3).
func amlNotify(path string, value uint64) ([]byte, error) {
	n, err := nameString(path)
	if err != nil {
		return nil, fmt.Errorf("Notify: %w", err)
	}
	b := append([]byte{amlNotifyOp}, n...)
	return append(b, amlInteger(value)...), nil
}
