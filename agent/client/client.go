package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// maxConnectReply bounds the hybrid vsock's "OK <port>\n" line.
const maxConnectReply = 32

// Client is a connection to one guest's agent. Its methods are safe for
// concurrent use; each call is its own stream on the connection.
type Client struct {
	s     *mux.Session
	hello proto.HelloReply
}

// Options tune New.
type Options struct {
	// Name is the client's name in the agent's log (default "ember").
	Name string
	// Version and MinVersion are the protocol versions offered (default:
	// this package's proto.Version and proto.MinVersion). Tests use them to
	// play an older or newer client.
	Version, MinVersion int
	// Features are the features the client uses (informational).
	Features []string
}

// DialHybridVsock connects to a guest's AF_VSOCK port through the host
// side of Ember's (and Firecracker's) hybrid vsock: the VM's unix socket
// udsPath, a "CONNECT <port>\n" line, and the VMM's "OK <host_port>\n".
// The connection then carries the guest's stream.
func DialHybridVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("connecting to the VM's vsock socket: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT to port %d: %w", port, err)
	}
	// A byte at a time: nothing of the guest's stream may be read here.
	var line []byte
	b := make([]byte, 1)
	for len(line) < maxConnectReply {
		if _, err := conn.Read(b); err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("vsock CONNECT to port %d: the VMM closed the connection: nothing listens on that port in the guest (is the agent running?)", port)
			}
			return nil, fmt.Errorf("vsock CONNECT to port %d: %w", port, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	f := strings.Fields(string(line))
	if len(f) != 2 || f[0] != "OK" {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT to port %d: the VMM answered %q, want \"OK <port>\"", port, line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT to port %d: the VMM answered %q, want \"OK <port>\"", port, line)
	}
	if !stop() {
		conn.Close()
		return nil, context.Cause(ctx)
	}
	return conn, nil
}

// Dial connects to the agent of the VM whose hybrid vsock socket is
// udsPath, on the agent's port, and says hello.
func Dial(ctx context.Context, udsPath string, opts Options) (*Client, error) {
	conn, err := DialHybridVsock(ctx, udsPath, proto.Port)
	if err != nil {
		return nil, err
	}
	return New(ctx, conn, opts)
}

// Attempt deadlines of Wait: the first, doubling up to the last.
const (
	waitAttempt    = 2 * time.Second
	waitAttemptMax = 30 * time.Second
	// waitInterval is the pause between attempts.
	waitInterval = 20 * time.Millisecond
)

// Wait dials the agent at udsPath (as Dial) until a hello completes, ctx
// ends, or ended is closed (the VM is gone; nil for never). Each attempt
// has its own deadline, doubling from 2 s to 30 s: right after a snapshot
// is restored, the guest may accept a connection and then drop it without
// a word when it handles the vsock transport reset (Linux resets its
// vsock sockets without telling the host), and an attempt bounded only by
// ctx would wait on that connection to the end.
func Wait(ctx context.Context, udsPath string, opts Options, ended <-chan struct{}) (*Client, error) {
	limit := waitAttempt
	for {
		actx, cancel := context.WithTimeout(ctx, limit)
		c, err := Dial(actx, udsPath, opts)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil {
			return c, nil
		}
		if timedOut {
			// A slow guest gets longer next time; a refused connection
			// (no VM or agent yet) is tried again as it was.
			limit = min(2*limit, waitAttemptMax)
		}
		select {
		case <-ended:
			return nil, fmt.Errorf("the VM ended before its agent answered (last error: %v)", err)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the guest's agent on %s: %w (last error: %v)", udsPath, context.Cause(ctx), err)
		case <-time.After(waitInterval):
		}
	}
}

// New says hello on conn (any stream connection to an agent) and returns
// the client. conn belongs to the client from then on: Close closes it.
func New(ctx context.Context, conn io.ReadWriteCloser, opts Options) (*Client, error) {
	h := proto.Hello{Magic: proto.Magic, Version: opts.Version, MinVersion: opts.MinVersion, Features: opts.Features, Client: opts.Name}
	if h.Version == 0 {
		h.Version = proto.Version
	}
	if h.MinVersion == 0 {
		h.MinVersion = proto.MinVersion
	}
	if h.Client == "" {
		h.Client = "ember"
	}
	payload, err := json.Marshal(h)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s, replyPayload, err := mux.Client(ctx, conn, payload)
	if err != nil {
		return nil, err
	}
	c := &Client{s: s}
	if err := proto.DecodeJSON(replyPayload, &c.hello); err != nil {
		s.Close()
		return nil, fmt.Errorf("agent hello: %w", err)
	}
	if c.hello.Error != nil {
		s.Close()
		return nil, fmt.Errorf("agent refused the connection: %w", c.hello.Error)
	}
	if c.hello.Magic != proto.Magic {
		s.Close()
		return nil, fmt.Errorf("agent hello: magic %q, want %q (not an Ember agent)", c.hello.Magic, proto.Magic)
	}
	if c.hello.Version < h.MinVersion || c.hello.Version > h.Version {
		s.Close()
		return nil, fmt.Errorf("agent chose protocol version %d, outside the %d..%d offered", c.hello.Version, h.MinVersion, h.Version)
	}
	return c, nil
}

// Hello is the agent's hello: its protocol version, features, operations
// and generation.
func (c *Client) Hello() proto.HelloReply { return c.hello }

// Close closes the connection. Processes in the guest go on; a new client
// reattaches to them.
func (c *Client) Close() error { return c.s.Close() }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.s.Done() }

// call runs a unary operation: one request, one reply message.
func call[Resp any](ctx context.Context, c *Client, op string, req any) (Resp, error) {
	st, err := c.s.Open(ctx, op, req)
	if err != nil {
		var resp Resp
		return resp, err
	}
	defer st.End(nil)
	return reply[Resp](ctx, st, op)
}

// reply reads st to its end and returns its one reply message (the first,
// if the agent sent more).
func reply[Resp any](ctx context.Context, st *mux.Stream, op string) (Resp, error) {
	var resp Resp
	got := false
	for {
		it, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return resp, err
		}
		if it.Kind == mux.KindMsg && !got {
			if err := proto.DecodeJSON(it.Payload, &resp); err != nil {
				return resp, err
			}
			got = true
		}
	}
	if !got {
		return resp, proto.Errorf(proto.CodeInternal, "%s: the agent sent no reply", op)
	}
	return resp, nil
}

// collect runs a stream operation whose replies are messages of type T.
func collect[T any](ctx context.Context, c *Client, op string, req any, each func(T)) error {
	st, err := c.s.Open(ctx, op, req)
	if err != nil {
		return err
	}
	defer st.End(nil)
	for {
		it, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if it.Kind == mux.KindMsg {
			var v T
			if err := proto.DecodeJSON(it.Payload, &v); err != nil {
				return err
			}
			each(v)
		}
	}
}

// Health asks the agent whether it is there; any answer means ready.
func (c *Client) Health(ctx context.Context) (proto.Health, error) {
	return call[proto.Health](ctx, c, proto.OpHealth, proto.Empty{})
}

// Restore runs the restore transaction (see proto.Restore). The reply
// has every step's outcome and timing; the error is the first failure.
func (c *Client) Restore(ctx context.Context, req proto.Restore) (proto.RestoreReply, error) {
	if err := req.Validate(); err != nil {
		return proto.RestoreReply{}, err
	}
	var reply proto.RestoreReply
	err := collect(ctx, c, proto.OpRestore, req, func(r proto.RestoreReply) { reply = r })
	return reply, err
}

// NewRestore makes a restore request with the host's time now, the
// generation given, and entropy drawn from rand (crypto/rand.Reader).
func NewRestore(generation uint64, rand io.Reader) (proto.Restore, error) {
	r := proto.Restore{Time: time.Now(), Generation: generation, Entropy: make([]byte, proto.MinEntropy)}
	if _, err := io.ReadFull(rand, r.Entropy); err != nil {
		return r, fmt.Errorf("drawing entropy for the guest: %w", err)
	}
	return r, nil
}

// List returns the processes the agent knows.
func (c *Client) List(ctx context.Context) ([]proto.ProcessInfo, error) {
	var ps []proto.ProcessInfo
	err := collect(ctx, c, proto.OpExecList, proto.Empty{}, func(p proto.ProcessInfo) { ps = append(ps, p) })
	return ps, err
}

// Input writes data to a process's stdin (and closes it with eof).
func (c *Client) Input(ctx context.Context, ref proto.ProcessRef, data []byte, eof bool) error {
	_, err := call[proto.Empty](ctx, c, proto.OpExecInput, proto.ExecInput{ProcessRef: ref, Data: data, EOF: eof})
	return err
}

// Signal sends signal sig to the process's group (or the process alone
// with leaderOnly).
func (c *Client) Signal(ctx context.Context, ref proto.ProcessRef, sig int, leaderOnly bool) error {
	_, err := call[proto.Empty](ctx, c, proto.OpExecSignal, proto.ExecSignal{ProcessRef: ref, Signal: sig, LeaderOnly: leaderOnly})
	return err
}

// Resize sets a process's terminal size.
func (c *Client) Resize(ctx context.Context, ref proto.ProcessRef, size proto.TTYSize) error {
	_, err := call[proto.Empty](ctx, c, proto.OpExecResize, proto.ExecResize{ProcessRef: ref, TTYSize: size})
	return err
}

// Release makes the agent forget a finished process and its output.
func (c *Client) Release(ctx context.Context, ref proto.ProcessRef) error {
	_, err := call[proto.Empty](ctx, c, proto.OpExecRelease, ref)
	return err
}

// Wait waits for a process to exit and returns its status (its output
// stays buffered for an attachment).
func (c *Client) Wait(ctx context.Context, ref proto.ProcessRef) (proto.ExitStatus, error) {
	p, err := c.Attach(ctx, proto.ExecAttach{ProcessRef: ref, From: -1, NoOutput: true})
	if err != nil {
		return proto.ExitStatus{}, err
	}
	return p.Wait(ctx)
}

// Stat describes a path (not following a final symbolic link).
func (c *Client) Stat(ctx context.Context, req proto.PathRequest) (proto.Entry, error) {
	return call[proto.Entry](ctx, c, proto.OpStat, req)
}

// ListDir lists a directory, req.Depth levels deep.
func (c *Client) ListDir(ctx context.Context, req proto.ListRequest) ([]proto.Entry, error) {
	var es []proto.Entry
	err := collect(ctx, c, proto.OpList, req, func(b proto.ListBatch) { es = append(es, b.Entries...) })
	return es, err
}

// MakeDir makes a directory and its parents; CodeExists if it exists.
func (c *Client) MakeDir(ctx context.Context, req proto.MkdirRequest) (proto.Entry, error) {
	return call[proto.Entry](ctx, c, proto.OpMkdir, req)
}

// Move renames a path.
func (c *Client) Move(ctx context.Context, req proto.MoveRequest) (proto.Entry, error) {
	return call[proto.Entry](ctx, c, proto.OpMove, req)
}

// Remove removes a path and everything under it.
func (c *Client) Remove(ctx context.Context, req proto.PathRequest) error {
	_, err := call[proto.Empty](ctx, c, proto.OpRemove, req)
	return err
}

// Upload streams r into the guest as req says (a file, or a tar to
// unpack), as fast as the guest writes it, and returns the Entry of what
// was written. An error from r, or ctx ending, aborts the upload (a file
// upload then leaves the old file untouched).
func (c *Client) Upload(ctx context.Context, req proto.WriteRequest, r io.Reader) (proto.Entry, error) {
	var e proto.Entry
	st, err := c.s.Open(ctx, proto.OpWrite, req)
	if err != nil {
		return e, err
	}
	defer st.End(nil)
	buf := make([]byte, proto.MaxData)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := st.Write(proto.ChanBody, buf[:n]); err != nil {
				break // the agent ended the stream: its reply says why
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			st.End(proto.Errorf(proto.CodeCanceled, "upload source failed: %v", rerr))
			return e, fmt.Errorf("reading the upload: %w", rerr)
		}
	}
	_ = st.CloseChannel(proto.ChanBody) // if it fails, the reply says why
	return reply[proto.Entry](ctx, st, proto.OpWrite)
}

// Download is a file (or a tar of a directory) coming from the guest.
type Download struct {
	// Entry describes what is being read.
	Entry proto.Entry
	st    *mux.Stream
	ctx   context.Context
	rest  []byte
	err   error
}

// Download starts reading a file, or a directory as a tar (req.Format).
// The contents come as fast as the caller reads them. Close the Download.
func (c *Client) Download(ctx context.Context, req proto.ReadRequest) (*Download, error) {
	st, err := c.s.Open(ctx, proto.OpRead, req)
	if err != nil {
		return nil, err
	}
	d := &Download{st: st, ctx: ctx}
	it, err := st.Recv(ctx)
	if err == nil && it.Kind != mux.KindMsg {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent sent data before the entry", proto.OpRead)
	}
	if err == nil {
		err = proto.DecodeJSON(it.Payload, &d.Entry)
	}
	if errors.Is(err, io.EOF) {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent sent nothing", proto.OpRead)
	}
	if err != nil {
		st.End(nil)
		return nil, err
	}
	return d, nil
}

// Read reads the contents; io.EOF once all of it came. An error means
// the download is incomplete.
func (d *Download) Read(p []byte) (int, error) {
	for len(d.rest) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		it, err := d.st.Recv(d.ctx)
		switch {
		case err != nil:
			d.err = err
		case it.Kind == mux.KindData && it.Channel == proto.ChanBody:
			d.rest = it.Payload
		}
	}
	n := copy(p, d.rest)
	d.rest = d.rest[n:]
	return n, nil
}

// Close ends the download (early, if not all was read).
func (d *Download) Close() error {
	d.st.End(nil)
	return nil
}

// ReadFile downloads a whole file into memory (for small files).
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	d, err := c.Download(ctx, proto.ReadRequest{PathRequest: proto.PathRequest{Path: path}})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var b bytes.Buffer
	_, err = io.Copy(&b, d)
	return b.Bytes(), err
}

// Watcher is a directory watch.
type Watcher struct {
	st *mux.Stream
}

// Watch starts watching a directory; it returns once the watches are in
// place, so every change after it is reported.
func (c *Client) Watch(ctx context.Context, req proto.WatchRequest) (*Watcher, error) {
	st, err := c.s.Open(ctx, proto.OpWatch, req)
	if err != nil {
		return nil, err
	}
	w := &Watcher{st: st}
	ev, err := w.Next(ctx)
	if err == nil && !ev.Started {
		err = proto.Errorf(proto.CodeInternal, "%s: first event is not the start", proto.OpWatch)
	}
	if err != nil {
		st.End(nil)
		return nil, err
	}
	return w, nil
}

// Next returns the next change.
func (w *Watcher) Next(ctx context.Context) (proto.WatchEvent, error) {
	for {
		it, err := w.st.Recv(ctx)
		if err != nil {
			return proto.WatchEvent{}, err
		}
		if it.Kind == mux.KindMsg {
			var ev proto.WatchEvent
			return ev, proto.DecodeJSON(it.Payload, &ev)
		}
	}
}

// Close stops the watch.
func (w *Watcher) Close() error {
	w.st.End(nil)
	return nil
}

// Metrics samples the guest's CPU, memory and root filesystem use.
func (c *Client) Metrics(ctx context.Context) (proto.Metrics, error) {
	if !c.hello.Supports(proto.FeatureMetrics) {
		return proto.Metrics{}, proto.Errorf(proto.CodeUnsupported, "the guest's agent (%s) does not sample metrics: rebuild the template with this Ember", c.hello.Agent)
	}
	return call[proto.Metrics](ctx, c, proto.OpMetrics, proto.Empty{})
}
