package initconfig

import (
	"reflect"
	"strings"
	"testing"
)

func valid() *Config {
	return &Config{
		Version:    Version,
		Mode:       ModeRun,
		Layers:     []Drive{{Serial: "layer0", FSType: FSErofs}, {Serial: "layer1", FSType: FSErofs}},
		Writable:   &Drive{Serial: "rw", FSType: FSExt4},
		Hostname:   "web-1.example",
		Env:        []string{"PATH=/usr/bin:/bin", "EMPTY="},
		WorkingDir: "/srv",
		User:       "app:staff",
		Args:       []string{"/bin/sh", "-c", "echo hi"},
		DNS:        []string{"10.0.0.1", "fd00::1"},
	}
}

func TestValidConfigRoundTrips(t *testing.T) {
	c := valid()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(%s): %v", b, err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, c)
	}
	for _, w := range []string{`"fs_type":"erofs"`, `"working_dir":"/srv"`, `"writable":{"serial":"rw"`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("encoding lacks %s: %s", w, b)
		}
	}
}

func TestMinimalConfigs(t *testing.T) {
	for _, c := range []Config{
		{Version: Version, Mode: ModeRun, Args: []string{"true"}},
		{Version: Version, Mode: ModeAgent},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// Each bad config fails with one error naming the field at fault.
func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"old version", func(c *Config) { c.Version = 0 }, "version: 0; this init reads version 1"},
		{"no mode", func(c *Config) { c.Mode = "" }, "mode: missing"},
		{"unknown mode", func(c *Config) { c.Mode = "exec" }, `mode: "exec"`},
		{"run without args", func(c *Config) { c.Args = nil }, "args: empty"},
		{"empty command", func(c *Config) { c.Args = []string{"", "x"} }, "args[0]: empty command"},
		{"NUL in an argument", func(c *Config) { c.Args = []string{"sh", "a\x00b"} }, "args[1]: contains a NUL"},
		{"empty serial", func(c *Config) { c.Layers[1].Serial = "" }, "layers[1].serial: \"\": empty"},
		{"long serial", func(c *Config) { c.Layers[0].Serial = strings.Repeat("a", 21) }, "layers[0].serial: \"aaaaaaaaaaaaaaaaaaaaa\": 21 bytes"},
		{"slash in serial", func(c *Config) { c.Layers[0].Serial = "a/b" }, "layers[0].serial: \"a/b\": character '/'"},
		{"duplicate serial", func(c *Config) { c.Writable.Serial = "layer0" }, `writable.serial: "layer0" is also layers[0]'s`},
		{"layer fs", func(c *Config) { c.Layers[0].FSType = "squashfs" }, `layers[0].fs_type: "squashfs"; want erofs or ext4`},
		{"writable fs", func(c *Config) { c.Writable.FSType = FSErofs }, `writable.fs_type: "erofs"; want ext4`},
		{"too many layers", func(c *Config) { c.Layers = make([]Drive, MaxLayers+1) }, "layers: 129 layers"},
		{"hostname chars", func(c *Config) { c.Hostname = "a_b" }, `hostname: "a_b": character '_'`},
		{"hostname dash", func(c *Config) { c.Hostname = "-a" }, `hostname: "-a": label "-a" starts or ends`},
		{"hostname label", func(c *Config) { c.Hostname = "a..b" }, "hostname: \"a..b\": empty label"},
		{"hostname length", func(c *Config) { c.Hostname = strings.Repeat("a", 65) }, "hostname: \"" + strings.Repeat("a", 65) + "\": 65 bytes"},
		{"env without =", func(c *Config) { c.Env = append(c.Env, "FOO") }, `env[2]: "FOO" has no '='`},
		{"env empty name", func(c *Config) { c.Env = []string{"=x"} }, `env[0]: "=x" has an empty name`},
		{"env twice", func(c *Config) { c.Env = []string{"A=1", "B=2", "A=3"} }, "env[2]: A is also set by env[0]"},
		{"env NUL", func(c *Config) { c.Env = []string{"A=\x00"} }, "env[0]: contains a NUL"},
		{"relative workdir", func(c *Config) { c.WorkingDir = "srv" }, `working_dir: "srv": not an absolute path`},
		{"user empty group", func(c *Config) { c.User = "app:" }, `user: "app:": group empty`},
		{"user empty name", func(c *Config) { c.User = ":staff" }, `user: ":staff": user empty`},
		{"user two colons", func(c *Config) { c.User = "a:b:c" }, `user: "a:b:c": group name "b:c" has character ':'`},
		{"uid range", func(c *Config) { c.User = "4294967295" }, "user: \"4294967295\": user id 4294967295 out of range"},
		{"user space", func(c *Config) { c.User = "a b" }, `user: "a b": user name "a b" has character ' '`},
		{"shm negative", func(c *Config) { c.ShmSizeMiB = -1 }, "shm_size_mib: -1"},
		{"dns count", func(c *Config) { c.DNS = []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"} }, "dns: 4 servers"},
		{"dns address", func(c *Config) { c.DNS = []string{"dns.example"} }, `dns[0]: "dns.example" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.edit(c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("no error for %+v", c)
			}
			if want := "config: " + tc.field; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q\nwant prefix %q", err, want)
			}
			if _, err := c.Marshal(); err == nil {
				t.Error("Marshal accepted an invalid config")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"unknown field", `{"version":1,"mode":"run","args":["x"],"entrypoint":["y"]}`, `unknown field "entrypoint"`},
		{"trailing data", `{"version":1,"mode":"run","args":["x"]} {}`, "data after the JSON object"},
		{"wrong type", `{"version":"1"}`, "cannot unmarshal string"},
		{"not JSON", `version=1`, "invalid character"},
		{"empty", ``, "EOF"},
		{"invalid", `{"version":1,"mode":"run"}`, "args: empty"},
		{"too big", `{"version":1,"mode":"run","args":["` + strings.Repeat("a", MaxSize) + `"]}`, "more than the"},
	} {
		_, err := Parse([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "config: ") {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestParseUser(t *testing.T) {
	for _, tc := range []struct{ in, user, group string }{
		{"", "", ""},
		{"app", "app", ""},
		{"1000", "1000", ""},
		{"app:staff", "app", "staff"},
		{"1000:50", "1000", "50"},
		{"app:50", "app", "50"},
		{"2147483647", "2147483647", ""},
	} {
		u, g, err := ParseUser(tc.in)
		if err != nil || u != tc.user || g != tc.group {
			t.Errorf("ParseUser(%q) = %q, %q, %v", tc.in, u, g, err)
		}
	}
	if _, ok := ParseID("2147483648"); ok {
		t.Error("ParseID accepted 2^31")
	}
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv(
		[]string{"PATH=/bin", "A=1", "A=2", "junk", "B=x"},
		[]string{"B=y", "C=3", "PATH=/usr/bin"},
	)
	want := []string{"PATH=/usr/bin", "A=2", "B=y", "C=3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("MergeEnv = %q, want %q", got, want)
	}
	c := Config{Version: Version, Mode: ModeRun, Args: []string{"x"}, Env: got}
	if err := c.Validate(); err != nil {
		t.Errorf("merged env does not validate: %v", err)
	}
}

// FuzzParse: no input makes Parse panic, and what it accepts encodes and
// parses back to the same config.
func FuzzParse(f *testing.F) {
	b, _ := valid().Marshal()
	f.Add(b)
	f.Add([]byte(`{"version":1,"mode":"agent"}`))
	f.Add([]byte(`{"version":1,"mode":"run","args":["x"],"user":"1:2","env":["A=B"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		c2, err := Parse(out)
		if err != nil || !reflect.DeepEqual(c, c2) {
			t.Fatalf("re-parse: %v\n%+v\n%+v", err, c, c2)
		}
	})
}
