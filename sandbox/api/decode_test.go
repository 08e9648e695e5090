package api

import (
	"strings"
	"testing"

	"github.com/embervm/ember/sandbox"
)

// TestDecodeErrorsNameTheField: each bad body gets one error that names
// what is wrong.
func TestDecodeErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{``, "body: empty"},
		{`{`, "body: truncated JSON"},
		{`{"template": 1}`, "template: want a JSON string"},
		{`{"template": "t", "timeout_s": "x"}`, "timeout_s: want a JSON number"},
		{`{"template": "t", "bogus": 1}`, "bogus: unknown field"},
		{`{"template": "t"} {}`, "body: more than one JSON value"},
		{`{"template": "t", "env": {"A": 1}}`, "env: want a JSON string"},
		{`[1]`, "body: want a JSON object"},
	} {
		var spec sandbox.SandboxSpec
		err := Decode(strings.NewReader(tc.body), &spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want an error containing %q", tc.body, err, tc.want)
		}
	}
}

// FuzzDecodeSandboxSpec: no body makes the decoder or the checks panic.
func FuzzDecodeSandboxSpec(f *testing.F) {
	f.Add([]byte(`{"template": "t", "timeout_s": 5, "env": {"A": "b"}, "metadata": {"k": "v"}}`))
	f.Add([]byte(`{"template": 1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec sandbox.SandboxSpec
		if Decode(strings.NewReader(string(body)), &spec) == nil {
			spec.Validate()
		}
	})
}

// FuzzDecodeTemplateSpec: as FuzzDecodeSandboxSpec, for templates.
func FuzzDecodeTemplateSpec(f *testing.F) {
	f.Add([]byte(`{"kernel": "/k", "vcpus": 1, "memory_mib": 64, "ready": {"kind": "boot-timer"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec sandbox.TemplateSpec
		if Decode(strings.NewReader(string(body)), &spec) == nil {
			spec.Validate()
		}
	})
}
