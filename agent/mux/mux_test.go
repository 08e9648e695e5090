package mux

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// socketPair returns two connected unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := osNewFile(fd)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func acceptAll([]byte) ([]byte, bool) { return []byte(`{}`), true }

// pair runs a server with handler on one end and returns a client session
// on the other.
func pair(t *testing.T, conn func(*testing.T) (net.Conn, net.Conn), handler func(*Stream)) *Session {
	t.Helper()
	a, b := conn(t)
	done := make(chan struct{})
	go func() {
		Server(b, acceptAll, handler)
		close(done)
	}()
	s, reply, err := Client(context.Background(), a, []byte(`{"hi":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "{}" {
		t.Fatalf("hello reply %q", reply)
	}
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return s
}

func netPipe(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }

func echo(st *Stream) {
	defer st.End(nil)
	for {
		it, err := st.Recv(st.Context())
		if err != nil {
			return
		}
		switch it.Kind {
		case KindData:
			if st.Write(it.Channel, it.Payload) != nil {
				return
			}
		case KindMsg:
			if st.SendMsg(json.RawMessage(it.Payload)) != nil {
				return
			}
		case KindClose:
			return
		}
	}
}

// Both sides write at full speed while reading: over a synchronous pipe
// (net.Pipe has no buffer at all) nothing deadlocks and every byte comes
// back in order.
func TestEchoBothWays(t *testing.T) {
	for name, conn := range map[string]func(*testing.T) (net.Conn, net.Conn){"net.Pipe": netPipe, "socketpair": socketPair} {
		t.Run(name, func(t *testing.T) {
			s := pair(t, conn, echo)
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, err := s.Open(context.Background(), "echo", nil)
					if err != nil {
						t.Error(err)
						return
					}
					defer st.End(nil)
					data := bytes.Repeat([]byte{byte('a' + i)}, 3<<20+17)
					go func() {
						st.Write(proto.ChanStdin, data)
						st.SendMsg(map[string]int{"n": i})
						st.CloseChannel(proto.ChanStdin)
					}()
					var got []byte
					for {
						it, err := st.Recv(context.Background())
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							t.Error(err)
							return
						}
						if it.Kind == KindData {
							got = append(got, it.Payload...)
						} else if it.Kind == KindMsg && len(got) != len(data) {
							t.Errorf("message before all the data (%d of %d bytes)", len(got), len(data))
						}
					}
					if !bytes.Equal(got, data) {
						t.Errorf("stream %d: %d bytes back, want %d", i, len(got), len(data))
					}
				}()
			}
			wg.Wait()
		})
	}
}

// A receiver that does not read holds at most a window per stream: the
// sender blocks, and nothing is lost once the receiver reads.
func TestFlowControlBoundsTheReceiver(t *testing.T) {
	release := make(chan struct{})
	streams := make(chan *Stream, 1)
	var got bytes.Buffer
	done := make(chan struct{})
	s := pair(t, socketPair, func(st *Stream) {
		defer st.End(nil)
		streams <- st
		<-release
		for {
			it, err := st.Recv(st.Context())
			if err != nil || it.Kind == KindClose {
				break
			}
			got.Write(it.Payload)
		}
		close(done)
	})
	st, err := s.Open(context.Background(), "sink", nil)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 400000) // 4 MB
	wrote := make(chan error, 1)
	go func() {
		err := st.Write(proto.ChanBody, data)
		if err == nil {
			err = st.CloseChannel(proto.ChanBody)
		}
		wrote <- err
	}()
	srv := <-streams
	queued := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		n := 0
		for _, it := range srv.queue {
			n += it.Cost()
		}
		return n
	}
	for queued() < proto.Window-(proto.HeaderSize+proto.MaxData) {
		time.Sleep(time.Millisecond)
	}
	if q := queued(); q > proto.Window {
		t.Fatalf("the receiver holds %d bytes, more than the window %d", q, proto.Window)
	}
	select {
	case err := <-wrote:
		t.Fatalf("the sender finished 4 MB into a %d-byte window: %v", proto.Window, err)
	default:
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	<-done
	if !bytes.Equal(got.Bytes(), data) {
		t.Errorf("received %d bytes, want %d", got.Len(), len(data))
	}
}

// Cancelling the client's context reaches the handler as its stream's
// context ending, with CodeCanceled.
func TestCancelReachesHandler(t *testing.T) {
	cause := make(chan error, 1)
	s := pair(t, socketPair, func(st *Stream) {
		<-st.Context().Done()
		cause <- context.Cause(st.Context())
		st.End(nil)
	})
	ctx, cancel := context.WithCancel(context.Background())
	st, err := s.Open(ctx, "wait", nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-cause; proto.CodeOf(err) != proto.CodeCanceled {
		t.Errorf("handler saw %v", err)
	}
	if _, err := st.Recv(context.Background()); proto.CodeOf(err) != proto.CodeCanceled {
		t.Errorf("client Recv after cancel: %v", err)
	}
}

// A lost connection ends every stream with CodeUnavailable.
func TestConnectionLoss(t *testing.T) {
	a, b := socketPair(t)
	go Server(b, acceptAll, func(st *Stream) { <-st.Context().Done() })
	s, _, err := Client(context.Background(), a, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Open(context.Background(), "wait", nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := st.Recv(context.Background()); proto.CodeOf(err) != proto.CodeUnavailable {
		t.Errorf("Recv after the connection broke: %v", err)
	}
	if _, err := s.Open(context.Background(), "x", nil); proto.CodeOf(err) != proto.CodeUnavailable {
		t.Errorf("Open after the connection broke: %v", err)
	}
}

// Streams beyond MaxStreams are refused with CodeExhausted; the others
// go on.
func TestMaxStreams(t *testing.T) {
	hold := make(chan struct{})
	s := pair(t, socketPair, func(st *Stream) {
		<-hold
		st.End(nil)
	})
	var open []*Stream
	for range MaxStreams {
		st, err := s.Open(context.Background(), "hold", nil)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	st, err := s.Open(context.Background(), "hold", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(context.Background()); proto.CodeOf(err) != proto.CodeExhausted {
		t.Errorf("stream %d: %v", MaxStreams+1, err)
	}
	close(hold)
	for _, st := range open {
		if _, err := st.Recv(context.Background()); !errors.Is(err, io.EOF) {
			t.Fatalf("held stream: %v", err)
		}
	}
}

// rawPeer speaks frames by hand to a Server.
func rawPeer(t *testing.T, handler func(*Stream)) (net.Conn, chan error) {
	t.Helper()
	a, b := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- Server(b, acceptAll, handler) }()
	t.Cleanup(func() { a.Close() })
	write(t, a, proto.Frame{Type: proto.FrameHello, Payload: []byte(`{}`)})
	if f, err := proto.ReadFrame(a); err != nil || f.Type != proto.FrameHello {
		t.Fatalf("hello reply %+v %v", f, err)
	}
	return a, done
}

func write(t *testing.T, c net.Conn, fs ...proto.Frame) {
	t.Helper()
	var b []byte
	for i := range fs {
		b = proto.AppendFrame(b, &fs[i])
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// A frame type this version does not know is skipped; the session goes
// on.
func TestUnknownFrameTypeSkipped(t *testing.T) {
	c, _ := rawPeer(t, func(st *Stream) { st.SendMsg(map[string]string{"op": st.Op()}); st.End(nil) })
	write(t, c,
		proto.Frame{Type: 99, Stream: 5, Payload: []byte("from a newer client")},
		proto.Frame{Type: proto.FrameOpen, Stream: 1, Payload: []byte(`{"op":"ping"}`)})
	f, err := proto.ReadFrame(c)
	if err != nil || f.Type != proto.FrameMsg || string(f.Payload) != `{"op":"ping"}` {
		t.Errorf("reply %+v %v", f, err)
	}
}

// A peer that sends beyond its window, reuses a stream ID or sends a
// malformed frame is cut off.
func TestProtocolViolationsEndTheSession(t *testing.T) {
	block := func(st *Stream) { <-st.Context().Done() }
	for name, frames := range map[string][]proto.Frame{
		"beyond the window": append([]proto.Frame{{Type: proto.FrameOpen, Stream: 1, Payload: []byte(`{"op":"x"}`)}},
			slices.Repeat([]proto.Frame{{Type: proto.FrameData, Stream: 1, Payload: make([]byte, proto.MaxData)}}, proto.Window/proto.MaxData+1)...),
		"stream id reused": {{Type: proto.FrameOpen, Stream: 2, Payload: []byte(`{"op":"x"}`)}, {Type: proto.FrameOpen, Stream: 2, Payload: []byte(`{"op":"x"}`)}},
		"empty data":       {{Type: proto.FrameOpen, Stream: 1, Payload: []byte(`{"op":"x"}`)}, {Type: proto.FrameData, Stream: 1}},
		"second hello":     {{Type: proto.FrameHello, Payload: []byte(`{}`)}},
		"window overflow":  {{Type: proto.FrameOpen, Stream: 1, Payload: []byte(`{"op":"x"}`)}, {Type: proto.FrameWindow, Stream: 1, Payload: proto.WindowPayload(proto.MaxWindow)}},
	} {
		t.Run(name, func(t *testing.T) {
			c, done := rawPeer(t, block)
			go func() {
				var b []byte
				for i := range frames {
					b = proto.AppendFrame(b, &frames[i])
				}
				c.Write(b)
			}()
			if err := <-done; err == nil || errors.Is(err, io.EOF) {
				t.Errorf("session ended with %v, want a protocol error", err)
			}
		})
	}
}

// FuzzSession feeds arbitrary bytes to a client session as the agent's
// side of the connection: a hostile guest must not crash, hang or grow
// the host's client.
func FuzzSession(f *testing.F) {
	var seed []byte
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameMsg, Stream: 1, Payload: []byte(`{"attached":{}}`)})
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameData, Channel: 1, Stream: 1, Payload: []byte("out")})
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameWindow, Stream: 2, Payload: proto.WindowPayload(10)})
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameClose, Stream: 2, Channel: 3})
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameEnd, Stream: 1, Payload: []byte(`{"error":{"code":"x"}}`)})
	seed = proto.AppendFrame(seed, &proto.Frame{Type: proto.FrameOpen, Stream: 3, Payload: []byte(`{"op":"x"}`)})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		in := proto.AppendFrame(nil, &proto.Frame{Type: proto.FrameHello, Payload: []byte(`{}`)})
		conn := &scripted{r: bytes.NewReader(append(in, data...)), gate: make(chan struct{})}
		s, _, err := Client(context.Background(), conn, []byte(`{}`))
		if err != nil {
			return
		}
		var sts []*Stream
		for range 3 {
			st, err := s.Open(context.Background(), "op", nil)
			if err != nil {
				break
			}
			sts = append(sts, st)
		}
		close(conn.gate) // the rest of the input once the streams exist
		for _, st := range sts {
			go st.Write(proto.ChanStdin, []byte("in"))
			for {
				if _, err := st.Recv(context.Background()); err != nil {
					break
				}
			}
		}
		s.Close()
	})
}

// scripted is a connection that reads a script (the hello first, the
// rest once gate is closed) and swallows writes.
type scripted struct {
	r     *bytes.Reader
	gate  chan struct{}
	once  bool
	mu    sync.Mutex
	close sync.Once
}

func (c *scripted) Read(p []byte) (int, error) {
	c.mu.Lock()
	first := !c.once
	c.once = true
	c.mu.Unlock()
	if first {
		return c.r.Read(p[:min(len(p), proto.HeaderSize+2)]) // just the hello
	}
	<-c.gate
	return c.r.Read(p)
}
func (c *scripted) Write(p []byte) (int, error) { return len(p), nil }
func (c *scripted) Close() error                { return nil }
