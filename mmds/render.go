package mmds

import (
	"strconv"
	"strings"
)

// Format is how a GET's answer is rendered.
type Format int

// Output formats.
const (
	// FormatIMDS is EC2's instance metadata text format: an object is the
	// list of its keys, one per line, a key whose value is an object with
	// a trailing '/'; a string is itself. Other values have no IMDS form.
	FormatIMDS Format = iota
	// FormatJSON is the value as compact JSON (Accept: application/json).
	FormatJSON
)

// Lookup renders the value at the request path in the given format. The
// path is the request's: runs of '/' count as one and one trailing '/' is
// dropped (Firecracker's sanitize_uri), then it is a JSON pointer (RFC
// 6901), "/" being the whole store. It fails with ErrNotFound or, in the
// IMDS format, ErrUnsupportedValueType.
func Lookup(root any, path string, f Format) ([]byte, error) {
	v, ok := pointer(root, pointerOf(path))
	if !ok {
		return nil, ErrNotFound
	}
	if f == FormatJSON {
		return AppendJSON(nil, v), nil
	}
	return imds(v)
}

// pointerOf turns a request path into a JSON pointer: repeated slashes
// collapsed, one trailing slash removed.
func pointerOf(path string) string {
	for strings.Contains(path, "//") {
		path = strings.ReplaceAll(path, "//", "/")
	}
	return strings.TrimSuffix(path, "/")
}

// pointer resolves a JSON pointer (RFC 6901) the way serde_json's
// Value::pointer does: "" is the root, other pointers start with '/', "~1"
// and "~0" in a token are '/' and '~', array indexes are decimal without a
// sign or leading zeros.
func pointer(root any, p string) (any, bool) {
	if p == "" {
		return root, true
	}
	if p[0] != '/' {
		return nil, false
	}
	v := root
	for _, tok := range strings.Split(p[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch t := v.(type) {
		case map[string]any:
			e, ok := t[tok]
			if !ok {
				return nil, false
			}
			v = e
		case []any:
			i, ok := arrayIndex(tok)
			if !ok || i >= len(t) {
				return nil, false
			}
			v = t[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// arrayIndex parses an RFC 6901 array index: "0" or digits without a
// leading zero.
func arrayIndex(tok string) (int, bool) {
	if tok == "" || tok[0] == '+' || (tok[0] == '0' && len(tok) > 1) {
		return 0, false
	}
	i, err := strconv.Atoi(tok)
	if err != nil || i < 0 {
		return 0, false
	}
	return i, true
}

// imds renders v in the IMDS format.
func imds(v any) ([]byte, error) {
	switch t := v.(type) {
	case string:
		return []byte(t), nil
	case map[string]any:
		var b []byte
		for i, k := range sortedKeys(t) {
			if i > 0 {
				b = append(b, '\n')
			}
			b = append(b, k...)
			if _, sub := t[k].(map[string]any); sub {
				b = append(b, '/')
			}
		}
		return b, nil
	}
	return nil, ErrUnsupportedValueType
}
