package proto

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	frames := []Frame{
		{Type: FrameHello, Payload: []byte(`{"magic":"ember-agent"}`)},
		{Type: FrameOpen, Stream: 1, Payload: []byte(`{"op":"sys.health"}`)},
		{Type: FrameData, Channel: ChanStderr, Stream: 1<<32 - 1, Payload: []byte("x")},
		{Type: FrameWindow, Stream: 7, Payload: WindowPayload(Window)},
		{Type: FrameClose, Channel: ChanStdin, Stream: 7},
		{Type: FrameEnd, Stream: 7},
	}
	var b []byte
	for i := range frames {
		b = AppendFrame(b, &frames[i])
	}
	r := bytes.NewReader(b)
	for _, want := range frames {
		got, err := ReadFrame(r)
		if err != nil {
			t.Fatal(err)
		}
		if got.Type != want.Type || got.Channel != want.Channel || got.Stream != want.Stream || !bytes.Equal(got.Payload, want.Payload) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if err := got.Check(); err != nil {
			t.Errorf("%s: %v", got.Type, err)
		}
	}
	if _, err := ReadFrame(r); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v", err)
	}
}

func TestFrameLimits(t *testing.T) {
	huge := AppendFrame(nil, &Frame{Type: FrameData, Stream: 1})
	huge[8], huge[9], huge[10], huge[11] = 0xff, 0xff, 0xff, 0xff
	if _, err := ReadFrame(bytes.NewReader(huge)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("a 4 GiB frame: %v", err)
	}
	short := AppendFrame(nil, &Frame{Type: FrameMsg, Stream: 1, Payload: []byte("{}")})
	if _, err := ReadFrame(bytes.NewReader(short[:len(short)-1])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a truncated frame: %v", err)
	}
	for _, f := range []Frame{
		{Type: FrameHello, Stream: 1},
		{Type: FrameMsg, Stream: 0},
		{Type: FrameData, Stream: 1},
		{Type: FrameWindow, Stream: 1, Payload: []byte{0, 0, 0, 0}},
		{Type: FrameWindow, Stream: 1, Payload: []byte{1}},
		{Type: FrameWindow, Stream: 1, Payload: WindowPayload(MaxWindow + 1)},
		{Type: FrameClose, Stream: 1, Payload: []byte{1}},
		{Type: FrameMsg, Stream: 1, Payload: make([]byte, MaxMessage+1)},
	} {
		if err := f.Check(); err == nil {
			t.Errorf("%s on stream %d with %d bytes passed the check", f.Type, f.Stream, len(f.Payload))
		}
	}
	unknown := Frame{Type: 200, Stream: 0, Payload: []byte("future")}
	if err := unknown.Check(); err != nil {
		t.Errorf("an unknown frame type must pass (it is skipped): %v", err)
	}
}

func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		h      Hello
		v      int
		code   string
		substr string
	}{
		{Hello{Magic: Magic, Version: 1, MinVersion: 1}, 1, "", ""},
		{Hello{Magic: Magic, Version: 5, MinVersion: 1}, 1, "", ""},
		{Hello{Magic: Magic, Version: 5, MinVersion: 2}, 0, CodeUnsupported, "versions 2..5"},
		{Hello{Magic: "other", Version: 1, MinVersion: 1}, 0, CodeInvalid, "magic"},
		{Hello{Magic: Magic, Version: 1, MinVersion: 0}, 0, CodeInvalid, "make no sense"},
	} {
		v, err := Negotiate(&c.h, 1, 1)
		if v != c.v || CodeOf(err) != c.code || (err != nil && !strings.Contains(err.Error(), c.substr)) {
			t.Errorf("%+v: %d, %v", c.h, v, err)
		}
	}
}

func TestValidate(t *testing.T) {
	for name, err := range map[string]error{
		"empty args":    (&ExecStart{}).Validate(),
		"nul arg":       (&ExecStart{Args: []string{"a\x00"}}).Validate(),
		"env key":       (&ExecStart{Args: []string{"a"}, Env: map[string]string{"A=B": "c"}}).Validate(),
		"tty size":      (&ExecStart{Args: []string{"a"}, TTY: &TTYSize{}}).Validate(),
		"buffer":        (&ExecStart{Args: []string{"a"}, BufferSize: 10}).Validate(),
		"ref none":      (&ProcessRef{}).Validate(),
		"ref both":      (&ProcessRef{PID: 1, Tag: "x"}).Validate(),
		"from":          (&ExecAttach{ProcessRef: ProcessRef{PID: 1}, From: -2}).Validate(),
		"signal":        (&ExecSignal{ProcessRef: ProcessRef{PID: 1}, Signal: 65}).Validate(),
		"path":          (&PathRequest{}).Validate(),
		"depth":         (&ListRequest{PathRequest: PathRequest{Path: "/"}, Depth: -1}).Validate(),
		"format":        (&ReadRequest{PathRequest: PathRequest{Path: "/"}, Format: "zip"}).Validate(),
		"mode":          (&WriteRequest{PathRequest: PathRequest{Path: "/x"}, Mode: 0o10000}).Validate(),
		"restore time":  (&Restore{Entropy: make([]byte, 32), Generation: 1}).Validate(),
		"restore gen":   (&Restore{Time: time.Now(), Entropy: make([]byte, 32)}).Validate(),
		"restore net":   (&Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1, Network: &Network{Address: "10.0.0.2"}}).Validate(),
		"gateway fam":   (&Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1, Network: &Network{Address: "10.0.0.2/24", Gateway: "::1"}}).Validate(),
		"iface":         (&Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1, Network: &Network{Interface: "a/b", Address: "10.0.0.2/24"}}).Validate(),
		"mtu":           (&Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1, Network: &Network{Address: "10.0.0.2/24", MTU: 1}}).Validate(),
		"dns":           (&Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1, Network: &Network{Address: "10.0.0.2/24", DNS: []string{"x"}}}).Validate(),
		"entropy short": (&Restore{Time: time.Now(), Entropy: make([]byte, 31), Generation: 1}).Validate(),
	} {
		if CodeOf(err) != CodeInvalid {
			t.Errorf("%s: %v, want invalid_argument", name, err)
		}
	}
	ok := Restore{Time: time.Now(), Entropy: make([]byte, 32), Generation: 1,
		Network: &Network{Address: "fd00::2/64", Gateway: "fd00::1", DNS: []string{"fd00::1"}, MTU: 1500}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

// FuzzDecode feeds arbitrary bytes to what reads the peer's frames: the
// frame reader, its checks, and the decoding of every message type. The
// bytes are what a guest sends the host's client, or the host the agent;
// nothing may panic or allocate beyond MaxFrame per frame.
func FuzzDecode(f *testing.F) {
	var seed []byte
	seed = AppendFrame(seed, &Frame{Type: FrameHello, Payload: []byte(`{"magic":"ember-agent","version":1,"min_version":1}`)})
	seed = AppendFrame(seed, &Frame{Type: FrameOpen, Stream: 1, Payload: []byte(`{"op":"exec.start","req":{"args":["sh"],"tty":{"cols":80,"rows":24}}}`)})
	seed = AppendFrame(seed, &Frame{Type: FrameMsg, Stream: 1, Payload: []byte(`{"attached":{"pid":5,"from":0}}`)})
	seed = AppendFrame(seed, &Frame{Type: FrameData, Channel: 1, Stream: 1, Payload: []byte("out")})
	seed = AppendFrame(seed, &Frame{Type: FrameMsg, Stream: 1, Payload: []byte(`{"exit":{"code":0,"output":3}}`)})
	seed = AppendFrame(seed, &Frame{Type: FrameEnd, Stream: 1, Payload: []byte(`{"error":{"code":"not_found","message":"x"}}`)})
	seed = AppendFrame(seed, &Frame{Type: FrameWindow, Stream: 1, Payload: WindowPayload(100)})
	f.Add(seed)
	f.Add([]byte{})
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxFrame {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			if fr.Check() != nil {
				continue
			}
			switch fr.Type {
			case FrameWindow:
				if n := fr.WindowIncrement(); n <= 0 || n > MaxWindow {
					t.Fatalf("checked window increment %d", n)
				}
			case FrameHello:
				var h Hello
				if DecodeJSON(fr.Payload, &h) == nil {
					Negotiate(&h, MinVersion, Version)
				}
				var hr HelloReply
				DecodeJSON(fr.Payload, &hr)
			case FrameOpen:
				var o Open
				if DecodeJSON(fr.Payload, &o) == nil {
					for _, v := range []interface{ Validate() error }{
						&ExecStart{}, &ExecAttach{}, &ExecSignal{}, &ExecResize{}, &ProcessRef{},
						&ListRequest{}, &MkdirRequest{}, &MoveRequest{}, &ReadRequest{}, &WriteRequest{}, &Restore{},
					} {
						if DecodeJSON(o.Req, v) == nil {
							v.Validate()
						}
					}
				}
			case FrameMsg, FrameEnd:
				var ev ExecEvent
				DecodeJSON(fr.Payload, &ev)
				var e End
				DecodeJSON(fr.Payload, &e)
				var c ExecControl
				DecodeJSON(fr.Payload, &c)
				var rr RestoreReply
				if DecodeJSON(fr.Payload, &rr) == nil {
					rr.Err()
				}
			}
		}
	})
}

// FuzzContainerRequests: container requests decoded from any bytes are
// validated without panicking, and an accepted one has only names that
// are file names and absolute mount destinations.
func FuzzContainerRequests(f *testing.F) {
	f.Add([]byte(`{"id":"a","layers":[{"serial":"spare0","fs_type":"erofs","size":4096}],"mounts":[{"destination":"/shared","type":"volume","source":"host-1"}]}`))
	f.Add([]byte(`{"id":"..","layers":[]}`))
	f.Add([]byte(`{"name":"v","kind":"file"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c ContainerCreate
		if DecodeJSON(data, &c) == nil && c.Validate() == nil {
			for _, l := range c.Layers {
				if strings.ContainsAny(l.Serial, "/\x00") || l.Serial == ".." {
					t.Fatalf("accepted serial %q", l.Serial)
				}
			}
			for _, m := range c.Mounts {
				if !strings.HasPrefix(m.Destination, "/") || (m.Type == MountVolume && strings.Contains(m.Source, "/")) {
					t.Fatalf("accepted mount %+v", m)
				}
			}
		}
		var v ContainerVolume
		if DecodeJSON(data, &v) == nil && v.Validate() == nil && strings.ContainsAny(v.Name, "/\x00") {
			t.Fatalf("accepted volume %q", v.Name)
		}
		var e ExecStart
		if DecodeJSON(data, &e) == nil && e.Validate() == nil && strings.Contains(e.Container, "/") {
			t.Fatalf("accepted container %q", e.Container)
		}
	})
}
