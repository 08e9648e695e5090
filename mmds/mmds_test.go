package mmds

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustParse(t testing.TB, s string) any {
	t.Helper()
	v, err := ParseJSON([]byte(s))
	if err != nil {
		t.Fatalf("ParseJSON(%s): %v", s, err)
	}
	return v
}

// TestMergePatch runs RFC 7396's appendix A examples.
func TestMergePatch(t *testing.T) {
	for _, tc := range []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	} {
		target := mustParse(t, tc.target)
		before := string(AppendJSON(nil, target))
		got := string(AppendJSON(nil, MergePatch(target, mustParse(t, tc.patch))))
		if got != tc.want {
			t.Errorf("merge %s into %s = %s, want %s", tc.patch, tc.target, got, tc.want)
		}
		if after := string(AppendJSON(nil, target)); after != before {
			t.Errorf("merge %s changed its target: %s, was %s", tc.patch, after, before)
		}
	}
}

// TestAppendJSON: compact, keys sorted, serde_json's escapes (no HTML
// escaping), numbers as written.
func TestAppendJSON(t *testing.T) {
	v := mustParse(t, `{ "b": [1, 2.50, -3e2, true, null], "a": "<&>\"\\\n\u0001\u2028é" }`)
	want := `{"a":"<&>\"\\\n\u0001` + "\u2028é" + `","b":[1,2.50,-3e2,true,null]}`
	if got := string(AppendJSON(nil, v)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []string{``, `{`, `{} {}`, `[1,]`, `{"a":1}x`} {
		if _, err := ParseJSON([]byte(bad)); err == nil {
			t.Errorf("ParseJSON(%q) accepted", bad)
		}
	}
}

// populated is Firecracker's data_store test document.
const populated = `{"name":{"first":"John","second":"Doe"},"age":43,"phones":["+401234567","+441234567"],
	"member":false,"shares_percentage":12.12,"balance":-24,"json_string":"{\n  \"hello\": \"world\"\n}"}`

// TestLookup: the IMDS format and JSON at JSON pointers, with Firecracker's
// expectations.
func TestLookup(t *testing.T) {
	root := mustParse(t, populated)
	for _, tc := range []struct {
		path    string
		imds    string // "" with imdsErr
		imdsErr error
		json    string
		jsonErr error
	}{
		{path: "/invalid_path", imdsErr: ErrNotFound, jsonErr: ErrNotFound},
		{path: "/name", imds: "first\nsecond", json: `{"first":"John","second":"Doe"}`},
		{path: "/name/", imds: "first\nsecond", json: `{"first":"John","second":"Doe"}`},
		{path: "//name///first", imds: "John", json: `"John"`},
		{path: "/age", imdsErr: ErrUnsupportedValueType, json: "43"},
		{path: "/phones/", imdsErr: ErrUnsupportedValueType, json: `["+401234567","+441234567"]`},
		{path: "/phones/0/", imds: "+401234567", json: `"+401234567"`},
		{path: "/phones/01", imdsErr: ErrNotFound, jsonErr: ErrNotFound},
		{path: "/phones/2", imdsErr: ErrNotFound, jsonErr: ErrNotFound},
		{path: "/member", imdsErr: ErrUnsupportedValueType, json: "false"},
		{path: "/shares_percentage", imdsErr: ErrUnsupportedValueType, json: "12.12"},
		{path: "/balance", imdsErr: ErrUnsupportedValueType, json: "-24"},
		{path: "/json_string", imds: "{\n  \"hello\": \"world\"\n}", json: `"{\n  \"hello\": \"world\"\n}"`},
		{path: "/", imds: "age\nbalance\njson_string\nmember\nname/\nphones\nshares_percentage",
			json: `{"age":43,"balance":-24,"json_string":"{\n  \"hello\": \"world\"\n}","member":false,"name":{"first":"John","second":"Doe"},"phones":["+401234567","+441234567"],"shares_percentage":12.12}`},
		{path: "/name/first/x", imdsErr: ErrNotFound, jsonErr: ErrNotFound},
	} {
		got, err := Lookup(root, tc.path, FormatIMDS)
		if !errors.Is(err, tc.imdsErr) || string(got) != tc.imds {
			t.Errorf("IMDS %s = %q, %v; want %q, %v", tc.path, got, err, tc.imds, tc.imdsErr)
		}
		got, err = Lookup(root, tc.path, FormatJSON)
		if !errors.Is(err, tc.jsonErr) || string(got) != tc.json {
			t.Errorf("JSON %s = %s, %v; want %s, %v", tc.path, got, err, tc.json, tc.jsonErr)
		}
	}
	// RFC 6901 escapes in keys.
	root = mustParse(t, `{"a/b":{"m~n":"x"}}`)
	if got, err := Lookup(root, "/a~1b/m~0n", FormatIMDS); err != nil || string(got) != "x" {
		t.Errorf("escaped pointer: %q %v", got, err)
	}
}

// TestStoreLimit: a PUT or PATCH over the limit is refused and changes
// nothing; PATCH needs a PUT first.
func TestStoreLimit(t *testing.T) {
	s := NewStore(30)
	if got := string(s.JSON()); got != "{}" {
		t.Errorf("empty store: %s", got)
	}
	if err := s.Patch(mustParse(t, `{"a":"b"}`)); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("patch before put: %v", err)
	}
	if err := s.Put(mustParse(t, `{"a":"0123456789"}`)); err != nil { // 18 bytes
		t.Fatal(err)
	}
	if err := s.Put(mustParse(t, `{"a":"0123456789012345678901234"}`)); !errors.Is(err, ErrLimitExceeded) {
		t.Errorf("put of 33 bytes: %v", err)
	}
	if err := s.Patch(mustParse(t, `{"b":"0123456789"}`)); !errors.Is(err, ErrLimitExceeded) {
		t.Errorf("patch to 33 bytes: %v", err)
	}
	if got := string(s.JSON()); got != `{"a":"0123456789"}` {
		t.Errorf("after refused writes: %s", got)
	}
	// Exactly at the limit fits (30 bytes).
	if err := s.Patch(mustParse(t, `{"b":"01234"}`)); err != nil {
		t.Errorf("patch to 30 bytes: %v", err)
	}
	if got := string(s.JSON()); got != `{"a":"0123456789","b":"01234"}` {
		t.Errorf("after patch: %s", got)
	}
	if err := s.Put(nil); err != nil || string(s.JSON()) != "{}" {
		t.Errorf("put null: %v %s", err, s.JSON())
	}
}

// TestTokenExpiry: a token is valid until its TTL has passed, on its own
// authority only; lifetimes out of 1..21600 are refused.
func TestTokenExpiry(t *testing.T) {
	var now time.Duration
	a, err := NewTokenAuthority("vm1")
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Duration { return now }
	tok, err := a.Generate(2)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 48 {
		t.Errorf("token %q: %d characters, want 48", tok, len(tok))
	}
	for _, tc := range []struct {
		at    time.Duration
		valid bool
	}{{0, true}, {1999 * time.Millisecond, true}, {2 * time.Second, false}, {time.Hour, false}} {
		now = tc.at
		if got := a.Valid(tok); got != tc.valid {
			t.Errorf("at %v: valid %v, want %v", tc.at, got, tc.valid)
		}
	}
	now = 0
	other, _ := NewTokenAuthority("vm1")
	if other.Valid(tok) {
		t.Error("another authority (a clone) accepted the token")
	}
	bad := []byte(tok)
	bad[20] ^= 'A' ^ 'B'
	for _, s := range []string{"", "INVALID_TOKEN", string(bad), tok + "AAAA", strings.Repeat("A", 71)} {
		if a.Valid(s) {
			t.Errorf("%q accepted", s)
		}
	}
	for _, ttl := range []uint64{0, MaxTokenTTL + 1} {
		_, err := a.Generate(ttl)
		var e InvalidTTLError
		if !errors.As(err, &e) || !strings.Contains(err.Error(), "between 1 and 21600") {
			t.Errorf("ttl %d: %v", ttl, err)
		}
	}
	if _, err := a.Generate(MaxTokenTTL); err != nil {
		t.Error(err)
	}
}

func TestConfigNormalize(t *testing.T) {
	c := Config{NetworkInterfaces: []string{"eth0"}}
	if err := c.Normalize(); err != nil || c.Version != V1 || c.IPv4Address != "169.254.169.254" {
		t.Errorf("defaults: %+v %v", c, err)
	}
	for _, tc := range []struct {
		c    Config
		want error
	}{
		{Config{}, ErrNoInterfaces},
		{Config{NetworkInterfaces: []string{"eth0"}, IPv4Address: "10.0.0.1"}, ErrNotLinkLocal},
		{Config{NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.0.1"}, ErrNotLinkLocal},
		{Config{NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.255.1"}, ErrNotLinkLocal},
	} {
		if err := tc.c.Normalize(); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.c, err, tc.want)
		}
	}
	for _, c := range []Config{
		{NetworkInterfaces: []string{"eth0"}, Version: "V3"},
		{NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.1"},
		{NetworkInterfaces: []string{"eth0"}, IPv4Address: "fe80::1"},
	} {
		if err := c.Normalize(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	c = Config{NetworkInterfaces: []string{"eth0", "eth1"}}
	if err := c.CheckInterfaces([]string{"eth0"}); !errors.Is(err, ErrNoSuchIface) {
		t.Errorf("missing eth1: %v", err)
	}
}
