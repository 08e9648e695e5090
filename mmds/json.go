package mmds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"unicode/utf8"
)

// A value of the store is what encoding/json decodes into an any with
// UseNumber: map[string]any, []any, string, json.Number, bool or nil.
// Published values are never modified (MergePatch copies what it changes),
// so readers share them without a lock.

// ParseJSON parses data, which must hold exactly one JSON value.
func ParseJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("EOF while parsing a value")
		}
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("trailing characters after the JSON value, at byte %d", dec.InputOffset())
	}
	return v, nil
}

// AppendJSON appends v serialised as serde_json::to_string does it:
// compact, object keys in byte order (serde_json's BTreeMap), strings with
// only '"', '\\' and control characters escaped. Firecracker measures the
// store's size and answers JSON GETs this way, so Ember's sizes and bodies
// are the same bytes.
func AppendJSON(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, v)
	case json.Number:
		return append(b, v...)
	case float64: // values built by Go code rather than parsed
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	case string:
		return appendString(b, v)
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendJSON(b, e)
		}
		return append(b, ']')
	case map[string]any:
		b = append(b, '{')
		for i, k := range sortedKeys(v) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = AppendJSON(b, v[k])
		}
		return append(b, '}')
	}
	panic(fmt.Sprintf("mmds: %T is not a JSON value", v))
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: serde_json's escapes (\" \\ \b
// \f \n \r \t, other control characters as \u00XX), everything else as it
// is. Invalid UTF-8 (impossible in a value parsed from JSON) becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b = append(b, "\ufffd"...)
			} else {
				b = append(b, s[i:i+n]...)
			}
			i += n
			continue
		}
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			if c < 0x20 {
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			} else {
				b = append(b, c)
			}
		}
		i++
	}
	return append(b, '"')
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
