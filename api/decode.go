package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
)

// DefaultMaxPayload is the default limit of a request body, in bytes
// (Firecracker's --http-api-max-payload-size default).
const DefaultMaxPayload = 51200

// Strict decoding. Go's encoding/json is lenient where Firecracker's serde
// is not: it matches keys case-insensitively, ignores unknown fields unless
// told, accepts null for any field, cannot tell a missing field from a zero
// one and ignores what follows the first value. decodeStrict closes these
// gaps in two passes over the body:
//
//  1. The body is parsed into a generic tree (exactly one JSON value), and
//     the tree is checked against the model's type: every key must be a
//     field's exact JSON name, every `api:"required"` field must be there,
//     and null is accepted only where the model has a pointer (Option in
//     Firecracker).
//  2. The body is decoded into the model with unknown fields disallowed;
//     this pass reports wrong types, naming the field.
//
// Errors name the field with its JSON path ("drives[0].path_on_host").

// tagAPI is the struct tag holding "required".
const (
	tagAPI      = "api"
	tagRequired = "required"
)

// shapeChecker is implemented by (pointers to) model types that decode
// themselves: the tree check calls it instead of looking inside.
type shapeChecker interface {
	checkShape(v any, path string) error
}

var (
	shapeCheckerType = reflect.TypeFor[shapeChecker]()
	unmarshalerType  = reflect.TypeFor[json.Unmarshaler]()
)

// decodeStrict decodes data, which must hold exactly one JSON value, into
// v, a pointer to a model.
func decodeStrict(data []byte, v any) error {
	tree, err := parseOne(data)
	if err != nil {
		return err
	}
	if err := checkShape(reflect.TypeOf(v).Elem(), tree, ""); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeJSONError(err)
	}
	return nil
}

// decodeModel decodes a request body into a new T; its errors are
// bodyErrors.
func decodeModel[T any](data []byte) (T, error) {
	var m T
	if err := decodeStrict(data, &m); err != nil {
		return m, bodyError{err}
	}
	return m, nil
}

// parseOne parses data into a generic tree (objects are map[string]any,
// numbers json.Number) and checks nothing follows the value.
func parseOne(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("EOF while parsing a value: the body holds no JSON value")
		}
		return nil, describeJSONError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("trailing characters after the JSON value, at byte %d", dec.InputOffset())
	}
	return tree, nil
}

// checkShape checks the tree value v against type t; path names v.
func checkShape(t reflect.Type, v any, path string) error {
	if reflect.PointerTo(t).Implements(shapeCheckerType) {
		return reflect.New(t).Interface().(shapeChecker).checkShape(v, path)
	}
	if t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil // json.RawMessage and the like: taken as they are
	}
	switch t.Kind() {
	case reflect.Pointer:
		if v == nil {
			return nil
		}
		return checkShape(t.Elem(), v, path)
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return wrongType(path, v, "an object")
		}
		return checkObject(t, obj, path)
	case reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			return wrongType(path, v, "an array")
		}
		for i, e := range arr {
			if err := checkShape(t.Elem(), e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if v == nil {
			return nil
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return wrongType(path, v, "an object")
		}
		for _, k := range sortedKeys(obj) {
			if err := checkShape(t.Elem(), obj[k], join(path, k)); err != nil {
				return err
			}
		}
	default:
		if v == nil {
			return wrongType(path, v, jsonKind(t))
		}
	}
	return nil
}

// checkObject checks a JSON object against struct type t.
func checkObject(t reflect.Type, obj map[string]any, path string) error {
	known := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, ok := jsonName(f)
		if !ok {
			continue
		}
		known[name] = true
		val, present := obj[name]
		if !present {
			if f.Tag.Get(tagAPI) == tagRequired {
				return fmt.Errorf("missing field %q", join(path, name))
			}
			continue
		}
		if err := checkShape(f.Type, val, join(path, name)); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(obj) {
		if !known[k] {
			return fmt.Errorf("unknown field %q", join(path, k))
		}
	}
	return nil
}

// jsonName is the JSON key of an exported struct field.
func jsonName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, true
}

func sortedKeys(obj map[string]any) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// join appends key to a JSON path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// wrongType describes a tree value of the wrong JSON type.
func wrongType(path string, v any, want string) error {
	if path == "" {
		return fmt.Errorf("invalid type: %s, expected %s", treeKind(v), want)
	}
	return fmt.Errorf("invalid type for field %q: %s, expected %s", path, treeKind(v), want)
}

// treeKind names the JSON type of a tree value.
func treeKind(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		return "number " + v.String()
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// jsonKind names the JSON type a Go type decodes from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer (" + t.Kind().String() + ")"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer (" + t.Kind().String() + ")"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return t.String()
}

// describeJSONError rewords encoding/json's errors: without the "json: "
// prefix, naming the field.
func describeJSONError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("invalid type: %s, expected %s", typ.Value, jsonKind(typ.Type))
		}
		return fmt.Errorf("invalid type for field %q: %s, expected %s", typ.Field, typ.Value, jsonKind(typ.Type))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("EOF while parsing a value: the JSON value is incomplete")
	}
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}
