// Package client is a typed Go client of emberd's REST API (package
// sandbox/api), over its unix socket or over TCP with a token.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/sandbox/network/egress"
	"github.com/embervm/ember/sandbox/wire"
)

const (
	// unixBase is the URL of requests over the unix socket (the host is
	// not used).
	unixBase = "http://emberd"
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
	// maxEventLine bounds one exec event line (base64 of the agent's
	// largest output frame and then some).
	maxEventLine = 16 << 20
	// maxRetryAfter bounds a Retry-After, in seconds (a day: anything
	// longer is not a wait but a refusal).
	maxRetryAfter = 24 * 60 * 60
)

// Client talks to one emberd.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// APIError is an error answer of emberd.
type APIError struct {
	Status  int
	Message string
	// Budget is the exhausted budget of a 429 (wire.BudgetMemory, ...)
	// and RetryAfter its Retry-After header (0 if absent or unreadable).
	Budget     string
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("emberd: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// StatusOf returns the HTTP status of an API error, or 0.
func StatusOf(err error) int {
	var e *APIError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// Exhausted reports whether err is a create refused because one of the
// host's budgets is exhausted (429 Too Many Requests), and if so which
// budget and how long emberd asks to wait (its Retry-After).
func Exhausted(err error) (budget string, retryAfter time.Duration, ok bool) {
	var e *APIError
	if errors.As(err, &e) && e.Status == http.StatusTooManyRequests {
		return e.Budget, e.RetryAfter, true
	}
	return "", 0, false
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an
// HTTP-date (RFC 9110 section 10.2.3), relative to now.
func parseRetryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		if secs < 0 || secs > maxRetryAfter {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(h)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), maxRetryAfter*time.Second), true
}

// New returns a client of the emberd serving on the unix socket path.
func New(path string) *Client {
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{base: unixBase, http: &http.Client{Transport: tr}}
}

// NewTCP returns a client of the emberd at addr (host:port) with token.
func NewTCP(addr, token string) *Client {
	return &Client{base: "http://" + addr, token: token, http: &http.Client{}}
}

// Close closes idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// request sends a request; body is JSON-encoded unless it is an
// io.Reader.
func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var r io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case io.Reader:
		r, ctype = b, "application/octet-stream"
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		r, ctype = bytes.NewReader(data), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return c.send(req)
}

// send sends req; an answer of 300 or more is an *APIError.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		e := &APIError{Status: resp.StatusCode}
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			e.RetryAfter = d
		}
		var eb wire.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			e.Message, e.Budget = eb.Error, eb.Budget
		} else {
			e.Message = strings.TrimSpace(string(data))
		}
		return nil, e
	}
	return resp, nil
}

// DialPort connects to TCP port on sandbox id's loopback (POST
// /sandboxes/{id}/ports/{port}, upgraded to wire.PortUpgrade): the
// connection carries that port's bytes both ways. Keep ctx alive as long
// as the connection; Close it when done.
func (c *Client) DialPort(ctx context.Context, id string, port int) (io.ReadWriteCloser, error) {
	path := idPath("/sandboxes", id, "/ports/", strconv.Itoa(port))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.PortUpgrade)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("POST %s: answered %s, want 101 Switching Protocols", path, resp.Status)
	}
	return rwc, nil
}

// do sends a request and decodes the answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.request(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

func idPath(prefix, id string, rest ...string) string {
	return prefix + "/" + url.PathEscape(id) + strings.Join(rest, "")
}

// BuildTemplate is POST /templates.
func (c *Client) BuildTemplate(ctx context.Context, spec wire.TemplateSpec) (wire.Template, error) {
	var t wire.Template
	err := c.do(ctx, http.MethodPost, "/templates", spec, &t)
	return t, err
}

// Templates is GET /templates.
func (c *Client) Templates(ctx context.Context) ([]wire.Template, error) {
	var ts []wire.Template
	err := c.do(ctx, http.MethodGet, "/templates", nil, &ts)
	return ts, err
}

// Template is GET /templates/{id}.
func (c *Client) Template(ctx context.Context, id string) (wire.Template, error) {
	var t wire.Template
	err := c.do(ctx, http.MethodGet, idPath("/templates", id), nil, &t)
	return t, err
}

// DeleteTemplate is DELETE /templates/{id}.
func (c *Client) DeleteTemplate(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, idPath("/templates", id), nil, nil)
}

// Create is POST /sandboxes.
func (c *Client) Create(ctx context.Context, spec wire.SandboxSpec) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodPost, "/sandboxes", spec, &sb)
	return sb, err
}

// Sandboxes is GET /sandboxes.
func (c *Client) Sandboxes(ctx context.Context) ([]wire.Sandbox, error) {
	var sbs []wire.Sandbox
	err := c.do(ctx, http.MethodGet, "/sandboxes", nil, &sbs)
	return sbs, err
}

// Sandbox is GET /sandboxes/{id}.
func (c *Client) Sandbox(ctx context.Context, id string) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodGet, idPath("/sandboxes", id), nil, &sb)
	return sb, err
}

// Kill is DELETE /sandboxes/{id}: the killed sandbox, or (zero, nil) when
// an ended sandbox was forgotten.
func (c *Client) Kill(ctx context.Context, id string) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodDelete, idPath("/sandboxes", id), nil, &sb)
	return sb, err
}

// Pause is POST /sandboxes/{id}/pause.
func (c *Client) Pause(ctx context.Context, id string) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodPost, idPath("/sandboxes", id, "/pause"), nil, &sb)
	return sb, err
}

// Resume is POST /sandboxes/{id}/resume.
func (c *Client) Resume(ctx context.Context, id string) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodPost, idPath("/sandboxes", id, "/resume"), nil, &sb)
	return sb, err
}

// Logs is GET /sandboxes/{id}/logs: source "console" (default) or "vmm".
func (c *Client) Logs(ctx context.Context, id, source string, w io.Writer) error {
	p := idPath("/sandboxes", id, "/logs")
	if source != "" {
		p += "?source=" + url.QueryEscape(source)
	}
	resp, err := c.request(ctx, http.MethodGet, p, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Exec is POST /sandboxes/{id}/exec: the output is written to stdout and
// stderr as it comes; the result is the process's exit status.
func (c *Client) Exec(ctx context.Context, id string, req wire.ExecRequest, stdout, stderr io.Writer) (wire.ExitStatus, error) {
	return c.ExecWith(ctx, id, req, nil, stdout, stderr)
}

// ExecWith is Exec that tells started (if not nil) the process's tag and
// pid before any output: with the tag and the bytes of output it had, a
// client whose stream broke gets the rest with Attach.
func (c *Client) ExecWith(ctx context.Context, id string, req wire.ExecRequest, started func(wire.ExecStarted), stdout, stderr io.Writer) (wire.ExitStatus, error) {
	resp, err := c.request(ctx, http.MethodPost, idPath("/sandboxes", id, "/exec"), req)
	if err != nil {
		return wire.ExitStatus{}, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, started, stdout, stderr)
}

// Attach is GET /sandboxes/{id}/exec/{tag}?from=FROM: a process's output
// from the offset from (the bytes of stdout and stderr the client had),
// then as it comes, and its exit status.
func (c *Client) Attach(ctx context.Context, id, tag string, from int64, started func(wire.ExecStarted), stdout, stderr io.Writer) (wire.ExitStatus, error) {
	path := idPath("/sandboxes", id, "/exec/"+url.PathEscape(tag)+"?from="+strconv.FormatInt(from, 10))
	resp, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return wire.ExitStatus{}, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, started, stdout, stderr)
}

// readEvents passes an exec answer's events on until the exit.
func readEvents(body io.Reader, started func(wire.ExecStarted), stdout, stderr io.Writer) (wire.ExitStatus, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		var ev wire.ExecEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return wire.ExitStatus{}, fmt.Errorf("exec: a bad event line: %w", err)
		}
		if ev.Started != nil && started != nil {
			started(*ev.Started)
		}
		if len(ev.Stdout) > 0 {
			if _, err := stdout.Write(ev.Stdout); err != nil {
				return wire.ExitStatus{}, err
			}
		}
		if len(ev.Stderr) > 0 {
			if _, err := stderr.Write(ev.Stderr); err != nil {
				return wire.ExitStatus{}, err
			}
		}
		if ev.Error != "" {
			var st wire.ExitStatus
			if ev.Exit != nil {
				st = *ev.Exit
			}
			return st, fmt.Errorf("exec: %s", ev.Error)
		}
		if ev.Exit != nil {
			return *ev.Exit, nil
		}
	}
	if err := sc.Err(); err != nil {
		return wire.ExitStatus{}, fmt.Errorf("exec: %w", err)
	}
	return wire.ExitStatus{}, errors.New("exec: the answer ended before the process's exit")
}

// Network is GET /sandboxes/{id}/network: the sandbox's addresses,
// policy and bytes metered.
func (c *Client) Network(ctx context.Context, id string) (wire.NetworkState, error) {
	var st wire.NetworkState
	err := c.do(ctx, http.MethodGet, idPath("/sandboxes", id, "/network"), nil, &st)
	return st, err
}

// Usage is GET /sandboxes/{id}/metrics: what the sandbox's guest uses now.
func (c *Client) Usage(ctx context.Context, id string) (wire.Usage, error) {
	var u wire.Usage
	err := c.do(ctx, http.MethodGet, idPath("/sandboxes", id, "/metrics"), nil, &u)
	return u, err
}

// SetPolicy is PUT /sandboxes/{id}/network/policy.
func (c *Client) SetPolicy(ctx context.Context, id string, p egress.Policy) (wire.Sandbox, error) {
	var sb wire.Sandbox
	err := c.do(ctx, http.MethodPut, idPath("/sandboxes", id, "/network/policy"), p, &sb)
	return sb, err
}

// Upload is PUT /sandboxes/{id}/files?path=PATH.
func (c *Client) Upload(ctx context.Context, id, path string, r io.Reader) error {
	return c.do(ctx, http.MethodPut, idPath("/sandboxes", id, "/files?path="+url.QueryEscape(path)), r, nil)
}

// Download is GET /sandboxes/{id}/files?path=PATH, written to w.
func (c *Client) Download(ctx context.Context, id, path string, w io.Writer) error {
	resp, err := c.request(ctx, http.MethodGet, idPath("/sandboxes", id, "/files?path="+url.QueryEscape(path)), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Crash is GET /sandboxes/{id}/crash: the crash record of a sandbox that
// ended abnormally (404 when it has none).
func (c *Client) Crash(ctx context.Context, id string) (wire.Crash, error) {
	var cr wire.Crash
	err := c.do(ctx, http.MethodGet, idPath("/sandboxes", id, "/crash"), nil, &cr)
	return cr, err
}

// Host is GET /host: the host's budgets and what the sandboxes hold.
func (c *Client) Host(ctx context.Context) (wire.Host, error) {
	var h wire.Host
	err := c.do(ctx, http.MethodGet, "/host", nil, &h)
	return h, err
}

// Metrics is GET /metrics, Prometheus' text format, written to w.
func (c *Client) Metrics(ctx context.Context, w io.Writer) error {
	resp, err := c.request(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// CreateAPIKey is POST /apikeys: the answer holds the key, which emberd
// does not keep.
func (c *Client) CreateAPIKey(ctx context.Context, name string) (wire.NewAPIKey, error) {
	var k wire.NewAPIKey
	err := c.do(ctx, http.MethodPost, "/apikeys", wire.APIKeyRequest{Name: name}, &k)
	return k, err
}

// APIKeys is GET /apikeys.
func (c *Client) APIKeys(ctx context.Context) ([]wire.APIKey, error) {
	var ks []wire.APIKey
	err := c.do(ctx, http.MethodGet, "/apikeys", nil, &ks)
	return ks, err
}

// DeleteAPIKey is DELETE /apikeys/{id}.
func (c *Client) DeleteAPIKey(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, idPath("/apikeys", id), nil, nil)
}

// E2B is GET /e2b: where emberd serves its E2B-compatible API.
func (c *Client) E2B(ctx context.Context) (wire.E2BInfo, error) {
	var info wire.E2BInfo
	err := c.do(ctx, http.MethodGet, "/e2b", nil, &info)
	return info, err
}
