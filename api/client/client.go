// Package client is a typed Go client of the Firecracker API that Ember
// serves (package api), over its unix socket. It works with Firecracker
// too.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/embervm/ember/api"
)

const (
	// baseURL is the URL requests are made to; the host is not used, the
	// connection always goes to the socket.
	baseURL = "http://localhost"
	// pollInterval is how often WaitForSocket tries to connect.
	pollInterval = 10 * time.Millisecond
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
)

// Client talks to one API socket.
type Client struct {
	socket string
	http   *http.Client
}

// APIError is a non-2xx answer: its status and fault_message.
type APIError struct {
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("api: %d %s: %s", e.Status, http.StatusText(e.Status), e.FaultMessage)
}

// New returns a client of the API served on the unix socket socketPath.
func New(socketPath string) *Client {
	dialer := &net.Dialer{}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: transport}}
}

// Close closes the client's idle kept-alive connection to the socket (a
// manager of thousands of VMs would otherwise hold one open per VM). The
// client stays usable: a later request connects again.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// WaitForSocket waits until something accepts connections on the unix
// socket at path, or ctx ends.
func WaitForSocket(ctx context.Context, path string) error {
	dialer := &net.Dialer{}
	for {
		conn, err := dialer.DialContext(ctx, "unix", path)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the API socket %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// do sends a request with in (if not nil) as its JSON body and decodes a
// 200's body into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encoding the body: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, baseURL+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return readAPIError(resp)
	}
	if out == nil {
		_, err := io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// readAPIError reads an error answer's fault_message (or its text, if it is
// not Firecracker's JSON).
func readAPIError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &APIError{Status: resp.StatusCode}
	var fault api.Error
	if err := json.Unmarshal(data, &fault); err == nil && fault.FaultMessage != "" {
		e.FaultMessage = fault.FaultMessage
	} else {
		e.FaultMessage = string(bytes.TrimSpace(data))
	}
	return e
}

// IsAPIError reports whether err is an answer of the API (rather than a
// failure to reach it), and returns it.
func IsAPIError(err error) (*APIError, bool) {
	var e *APIError
	ok := errors.As(err, &e)
	return e, ok
}

// idPath is prefix/id with id escaped.
func idPath(prefix, id string) string { return prefix + "/" + url.PathEscape(id) }

// Describe is GET /.
func (c *Client) Describe(ctx context.Context) (api.InstanceInfo, error) {
	var info api.InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version is GET /version: the Firecracker version the server implements.
func (c *Client) Version(ctx context.Context) (string, error) {
	var v api.FirecrackerVersion
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// VMConfig is GET /vm/config.
func (c *Client) VMConfig(ctx context.Context) (api.FullVmConfiguration, error) {
	var f api.FullVmConfiguration
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &f)
	return f, err
}

// Action is PUT /actions with actionType.
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.do(ctx, http.MethodPut, "/actions", api.InstanceActionInfo{ActionType: actionType}, nil)
}

// InstanceStart boots the microVM.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.Action(ctx, api.ActionInstanceStart)
}

// SendCtrlAltDel presses Ctrl+Alt+Del in the guest.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.Action(ctx, api.ActionSendCtrlAltDel)
}

// FlushMetrics writes the metrics now.
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.Action(ctx, api.ActionFlushMetrics)
}

// GetMachineConfig is GET /machine-config.
func (c *Client) GetMachineConfig(ctx context.Context) (api.MachineConfiguration, error) {
	var m api.MachineConfiguration
	err := c.do(ctx, http.MethodGet, "/machine-config", nil, &m)
	return m, err
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m api.MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PatchMachineConfig is PATCH /machine-config.
func (c *Client) PatchMachineConfig(ctx context.Context, m api.MachineConfiguration) error {
	return c.do(ctx, http.MethodPatch, "/machine-config", m, nil)
}

// PutCpuConfig is PUT /cpu-config.
func (c *Client) PutCpuConfig(ctx context.Context, t api.CpuConfig) error {
	return c.do(ctx, http.MethodPut, "/cpu-config", t, nil)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b api.BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutEmberImage is PUT /ember/image, an Ember extension: boot image b of
// Ember's store (its drives and initrd; before boot, once).
func (c *Client) PutEmberImage(ctx context.Context, b api.EmberImage) error {
	return c.do(ctx, http.MethodPut, "/ember/image", b, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d api.Drive) error {
	return c.do(ctx, http.MethodPut, idPath("/drives", d.DriveID), d, nil)
}

// PatchDrive is PATCH /drives/{drive_id}.
func (c *Client) PatchDrive(ctx context.Context, d api.PartialDrive) error {
	return c.do(ctx, http.MethodPatch, idPath("/drives", d.DriveID), d, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n api.NetworkInterface) error {
	return c.do(ctx, http.MethodPut, idPath("/network-interfaces", n.IfaceID), n, nil)
}

// PatchNetworkInterface is PATCH /network-interfaces/{iface_id}.
func (c *Client) PatchNetworkInterface(ctx context.Context, n api.PartialNetworkInterface) error {
	return c.do(ctx, http.MethodPatch, idPath("/network-interfaces", n.IfaceID), n, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v api.Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutEntropy is PUT /entropy.
func (c *Client) PutEntropy(ctx context.Context, e api.EntropyDevice) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutBalloon is PUT /balloon.
func (c *Client) PutBalloon(ctx context.Context, b api.Balloon) error {
	return c.do(ctx, http.MethodPut, "/balloon", b, nil)
}

// PatchBalloon is PATCH /balloon: a new target size.
func (c *Client) PatchBalloon(ctx context.Context, u api.BalloonUpdate) error {
	return c.do(ctx, http.MethodPatch, "/balloon", u, nil)
}

// GetBalloon is GET /balloon.
func (c *Client) GetBalloon(ctx context.Context) (api.Balloon, error) {
	var b api.Balloon
	err := c.do(ctx, http.MethodGet, "/balloon", nil, &b)
	return b, err
}

// GetBalloonStats is GET /balloon/statistics.
func (c *Client) GetBalloonStats(ctx context.Context) (api.BalloonStats, error) {
	var st api.BalloonStats
	err := c.do(ctx, http.MethodGet, "/balloon/statistics", nil, &st)
	return st, err
}

// PatchBalloonStats is PATCH /balloon/statistics.
func (c *Client) PatchBalloonStats(ctx context.Context, u api.BalloonStatsUpdate) error {
	return c.do(ctx, http.MethodPatch, "/balloon/statistics", u, nil)
}

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l api.Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics is PUT /metrics.
func (c *Client) PutMetrics(ctx context.Context, m api.Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// PutSerial is PUT /serial.
func (c *Client) PutSerial(ctx context.Context, s api.SerialConfig) error {
	return c.do(ctx, http.MethodPut, "/serial", s, nil)
}

// PatchVM is PATCH /vm: state api.VMStatePaused or api.VMStateResumed.
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.do(ctx, http.MethodPatch, "/vm", api.Vm{State: state}, nil)
}

// Pause is PATCH /vm {"state": "Paused"}.
func (c *Client) Pause(ctx context.Context) error { return c.PatchVM(ctx, api.VMStatePaused) }

// Resume is PATCH /vm {"state": "Resumed"}.
func (c *Client) Resume(ctx context.Context) error { return c.PatchVM(ctx, api.VMStateResumed) }

// CreateSnapshot is PUT /snapshot/create.
func (c *Client) CreateSnapshot(ctx context.Context, p api.SnapshotCreateParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot is PUT /snapshot/load.
func (c *Client) LoadSnapshot(ctx context.Context, p api.SnapshotLoadParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// PutMMDS is PUT /mmds: data (any JSON value, or a json.RawMessage)
// replaces the MMDS data store.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.do(ctx, http.MethodPut, "/mmds", data, nil)
}

// PatchMMDS is PATCH /mmds: patch is merged into the data store (RFC 7396).
func (c *Client) PatchMMDS(ctx context.Context, patch any) error {
	return c.do(ctx, http.MethodPatch, "/mmds", patch, nil)
}

// GetMMDS is GET /mmds: the whole data store.
func (c *Client) GetMMDS(ctx context.Context) (json.RawMessage, error) {
	var out json.RawMessage
	err := c.do(ctx, http.MethodGet, "/mmds", nil, &out)
	return out, err
}

// PutMMDSConfig is PUT /mmds/config (before boot).
func (c *Client) PutMMDSConfig(ctx context.Context, m api.MmdsConfig) error {
	return c.do(ctx, http.MethodPut, "/mmds/config", m, nil)
}
