package e2b

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/sandbox"
)

var (
	emberOnce sync.Once
	emberBin  string
	emberErr  error
)

// emberBinary builds ember once (static, as its seccomp filters need).
func emberBinary(t *testing.T) string {
	t.Helper()
	emberOnce.Do(func() {
		dir, err := os.MkdirTemp("", "e2b-test-bin-")
		if err != nil {
			emberErr = err
			return
		}
		emberBin, emberErr = testbin.Build(dir, "ember", "github.com/embervm/ember/cmd/ember")
	})
	if emberErr != nil {
		t.Fatal(emberErr)
	}
	return emberBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if emberBin != "" {
		os.RemoveAll(filepath.Dir(emberBin))
	}
	os.Exit(code)
}

// standIn is the manager's backend with one change: every running
// sandbox's agent is the stand-in agent of the test process (the tiny
// guests that run on this host have none).
type standIn struct {
	m  *sandbox.Manager
	ac *agentclient.Client
}

func (s standIn) Agent(_ context.Context, id string) (*agentclient.Client, map[string]string, error) {
	sb, err := s.m.Sandbox(id)
	if err != nil {
		return nil, nil, err
	}
	if sb.State != sandbox.StateRunning {
		return nil, nil, &sandbox.Error{Kind: sandbox.KindConflict, Msg: fmt.Sprintf("sandbox %s is %s, not running", id, sb.State)}
	}
	return s.ac, sb.Env, nil
}

func (s standIn) Running() []string { return ManagerBackend{M: s.m}.Running() }

// hostEnv is a sandbox.Manager with the tiny template "tiny" and the E2B
// listener in front of it.
type hostEnv struct {
	m   *sandbox.Manager
	url string
	key string
	// caPEM is the listener's certificate with TLS (hostOptions.tls).
	caPEM []byte
	// protos counts the requests served by protocol ("HTTP/1.1", "HTTP/2.0").
	protos *protoCount
}

// hostOptions tune startHost.
type hostOptions struct {
	adm sandbox.AdmissionConfig
	// tls serves the listener over TLS with HTTP/2, as emberd's
	// --e2b-tls-cert does.
	tls bool
}

// protoCount counts requests by protocol.
type protoCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *protoCount) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.n[r.Proto]++
		p.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (p *protoCount) get(proto string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[proto]
}

// startHost opens a manager and serves the E2B listener; with ac, envd
// calls reach ac.
func startHost(t *testing.T, ac *agentclient.Client, o hostOptions) *hostEnv {
	t.Helper()
	testkvm.Need(t)
	m, err := sandbox.Open(sandbox.Config{StateDir: t.TempDir(), Ember: emberBinary(t), Admission: o.adm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		sbs, _ := m.Sandboxes()
		for _, sb := range sbs {
			if sb.State != sandbox.StateExited {
				m.Kill(ctx, sb.ID)
			}
		}
		m.Close()
	})
	k := filepath.Join(t.TempDir(), "sandbox.elf")
	if err := os.WriteFile(k, tiny.Sandbox(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := m.BuildTemplate(ctx, sandbox.TemplateSpec{Name: "tiny", Kernel: k, MemoryMiB: 16, Ready: sandbox.ReadyCheck{Kind: sandbox.ReadyBootTimer}}); err != nil {
		t.Fatal(err)
	}
	var b Backend = ManagerBackend{M: m}
	if ac != nil {
		b = standIn{m: m, ac: ac}
	}
	// Sandboxes report the domain emberd's default gives a loopback
	// listener: localhost:<port>.
	srv := httptest.NewUnstartedServer(nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	h, err := newHandler(m, Options{Domain: "localhost:" + port}, b)
	if err != nil {
		t.Fatal(err)
	}
	protos := &protoCount{n: map[string]int{}}
	srv.Config.Handler = protos.wrap(h)
	var caPEM []byte
	if o.tls {
		srv.EnableHTTP2 = true
		srv.StartTLS()
		caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	key, err := m.CreateAPIKey("test")
	if err != nil {
		t.Fatal(err)
	}
	return &hostEnv{m: m, url: srv.URL, key: key.Key, caPEM: caPEM, protos: protos}
}

// call sends an API request with the key (unless key is "-") and
// returns the status, the X-Next-Token and the body.
func (h *hostEnv) call(t *testing.T, method, path, key, body string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key == "" {
		key = h.key
	}
	if key != "-" {
		req.Header.Set("X-API-KEY", key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Next-Token"), data
}

// want checks a status and, for errors, E2B's body with the same code.
func want(t *testing.T, what string, status int, data []byte, wantStatus int) {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("%s: %d %s, want %d", what, status, data, wantStatus)
	}
	if status >= 400 {
		var eb errorBody
		if err := json.Unmarshal(data, &eb); err != nil || eb.Code != status || eb.Message == "" {
			t.Fatalf("%s: error body %s, want {code: %d, message}", what, data, status)
		}
	}
}

// TestControlPlane drives E2B's sandbox routes against emberd's manager
// with the tiny guest: keys, create, get, list with filters and pages,
// timeout, pause, connect, kill, and E2B's error bodies.
func TestControlPlane(t *testing.T) {
	h := startHost(t, nil, hostOptions{})
	st, _, data := h.call(t, "GET", "/v2/sandboxes", "-", "")
	want(t, "no key", st, data, 401)
	st, _, data = h.call(t, "GET", "/v2/sandboxes", "e2b_0000", "")
	want(t, "wrong key", st, data, 401)
	st, _, data = h.call(t, "POST", "/v2/sandboxes", "", `{"templateID":"nope"}`)
	want(t, "unknown template", st, data, 404)
	st, _, data = h.call(t, "POST", "/v2/sandboxes", "", `{"timeout":10}`)
	want(t, "no template", st, data, 400)
	st, _, data = h.call(t, "POST", "/v2/sandboxes", "", `{"templateID":"tiny","autoPause":true}`)
	want(t, "autoPause", st, data, 400)
	st, _, data = h.call(t, "POST", "/v2/sandboxes", "", `{"templateID":"tiny","timeout":"long"}`)
	want(t, "timeout of the wrong type", st, data, 400)

	var ids []string
	for i, team := range []string{"a", "b", "a"} {
		st, _, data = h.call(t, "POST", "/v2/sandboxes", "", fmt.Sprintf(`{"templateID":"tiny","metadata":{"team":%q,"n":"%d"},"envVars":{"K":"V"}}`, team, i))
		want(t, "create", st, data, 201)
		var sb sandboxBody
		if err := json.Unmarshal(data, &sb); err != nil {
			t.Fatal(err)
		}
		if sb.SandboxID == "" || sb.TemplateID != "tiny" || sb.EnvdVersion != EnvdVersion || len(sb.EnvdAccessToken) != 64 {
			t.Fatalf("create answer %s", data)
		}
		ids = append(ids, sb.SandboxID)
	}
	// The default timeout is 300 s.
	st, _, data = h.call(t, "GET", "/sandboxes/"+ids[0], "", "")
	want(t, "get", st, data, 200)
	var d sandboxDetail
	json.Unmarshal(data, &d)
	if d.State != "running" || d.Metadata["team"] != "a" || d.CPUCount != 1 || d.MemoryMB != 16 {
		t.Fatalf("detail %s", data)
	}
	if left := time.Until(d.EndAt); left < 290*time.Second || left > 300*time.Second {
		t.Fatalf("endAt %v: %v from now, want about 300 s", d.EndAt, left)
	}

	// Metadata filter (encoded as the SDK encodes it) and paging.
	md := url.QueryEscape(url.Values{"team": {"a"}}.Encode())
	st, _, data = h.call(t, "GET", "/v2/sandboxes?metadata="+md, "", "")
	want(t, "list by metadata", st, data, 200)
	var ls []listedSandbox
	json.Unmarshal(data, &ls)
	if len(ls) != 2 || ls[0].Metadata["team"] != "a" || ls[1].Metadata["team"] != "a" {
		t.Fatalf("list team=a: %s", data)
	}
	seen := map[string]bool{}
	next := ""
	for page := 0; ; page++ {
		path := "/v2/sandboxes?limit=1&order=asc"
		if next != "" {
			path += "&nextToken=" + url.QueryEscape(next)
		}
		st, next, data = h.call(t, "GET", path, "", "")
		want(t, "page", st, data, 200)
		json.Unmarshal(data, &ls)
		for _, s := range ls {
			seen[s.SandboxID] = true
		}
		if next == "" || page > 5 {
			break
		}
	}
	if len(seen) != 3 {
		t.Fatalf("pages gave %v", seen)
	}
	st, _, data = h.call(t, "GET", "/v2/sandboxes?state=stopped", "", "")
	want(t, "bad state", st, data, 400)

	// Timeout: 1 s from now ends the sandbox.
	st, _, data = h.call(t, "POST", "/sandboxes/"+ids[1]+"/timeout", "", `{"timeout":1}`)
	want(t, "set timeout", st, data, 204)
	deadline := time.Now().Add(20 * time.Second)
	for {
		sb, err := h.m.Sandbox(ids[1])
		if err != nil {
			t.Fatal(err)
		}
		if sb.State == sandbox.StateExited {
			if sb.Exit.Reason != sandbox.ExitTimeout {
				t.Fatalf("ended with %+v, want a timeout", sb.Exit)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sandbox outlived its 1 s timeout by 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _, data = h.call(t, "GET", "/sandboxes/"+ids[1], "", "")
	want(t, "get an ended sandbox", st, data, 404)

	// Pause (twice: 409 in the body too), connect resumes (201), connect
	// again (200).
	st, _, data = h.call(t, "POST", "/sandboxes/"+ids[0]+"/pause", "", "")
	want(t, "pause", st, data, 204)
	st, _, data = h.call(t, "POST", "/sandboxes/"+ids[0]+"/pause", "", "")
	want(t, "pause a paused sandbox", st, data, 409)
	st, _, data = h.call(t, "GET", "/v2/sandboxes?state=paused", "", "")
	json.Unmarshal(data, &ls)
	if len(ls) != 1 || ls[0].SandboxID != ids[0] || ls[0].State != "paused" {
		t.Fatalf("paused list %s", data)
	}
	st, _, data = h.call(t, "POST", "/v2/sandboxes/"+ids[0]+"/connect", "", `{"timeout":60}`)
	want(t, "connect to a paused sandbox", st, data, 201)
	st, _, data = h.call(t, "POST", "/v2/sandboxes/"+ids[0]+"/connect", "", `{}`)
	want(t, "connect to a running sandbox", st, data, 200)
	st, _, data = h.call(t, "POST", "/sandboxes/"+ids[0]+"/resume", "", `{}`)
	want(t, "resume a running sandbox", st, data, 409)

	// Kill; kill again and unknown IDs are E2B's 404.
	st, _, data = h.call(t, "DELETE", "/sandboxes/"+ids[0], "", "")
	want(t, "kill", st, data, 204)
	st, _, data = h.call(t, "DELETE", "/sandboxes/"+ids[0], "", "")
	want(t, "kill again", st, data, 404)
	for _, p := range []string{"/sandboxes/sb-none/timeout", "/sandboxes/sb-none/pause", "/v2/sandboxes/sb-none/connect"} {
		st, _, data = h.call(t, "POST", p, "", `{"timeout":5}`)
		want(t, p, st, data, 404)
	}
	st, _, data = h.call(t, "GET", "/v2/sandboxes/oops/nothing", "", "")
	want(t, "unknown route", st, data, 404)
}
