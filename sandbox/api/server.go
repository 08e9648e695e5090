// Package api is emberd's REST API: JSON over HTTP/1.1 on a unix socket
// (and, optionally, TCP with a bearer token), in front of a
// sandbox.Manager. Its document is openapi.json (served at
// GET /openapi.json), which a test checks against the router's routes.
//
// Every error is one JSON object {"error": "..."}: 400 names the field at
// fault (malformed JSON, unknown fields, wrong types, bad values), 404 an
// unknown template, sandbox or route, 405 a method a route does not take,
// 409 a request the object's state refuses (pause a paused sandbox, exec
// without an agent), 429 a create over one of the host's budgets (with
// Retry-After and the budget named in the body's "budget"), 401 a TCP
// request without the token, 500 a failure of emberd or a VM. Nothing is
// half-made by a refused request.
//
// GET /host shows the host's budgets and what the sandboxes hold (for an
// external scheduler that bin-packs), GET /metrics is Prometheus'
// exposition of the manager's registry, GET /sandboxes/{id}/crash a
// sandbox's crash record.
//
// API keys (POST, GET /apikeys, DELETE /apikeys/{id}) are the keys of
// emberd's E2B-compatible API (package sandbox/e2b); only their SHA-256 is
// stored, and the key is in the creation's answer alone.
//
// Exec answers with a stream of JSON lines (application/x-ndjson):
// {"started": {"pid", "tag", "from"}} first, then one event each as the
// process produces it: {"stdout": BASE64}, {"stderr": BASE64}, then
// {"exit": {"code": N, ...}} or {"error": "..."}. A client that lost the
// stream (or whose emberd was restarted) gets the rest with
// GET /sandboxes/{id}/exec/{tag}?from=BYTES_IT_HAD: emberd leaves the
// last 256 KiB it sent in the agent's buffer for that.
package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/network"
)

// MaxBody bounds a JSON request body (1 MiB: a sandbox's env and metadata
// are at most sandbox.MaxMetadata entries).
const MaxBody = 1 << 20

// OpenAPI is the API's OpenAPI 3 document.
//
//go:embed openapi.json
var OpenAPI []byte

// Route is one route of the API.
type Route struct {
	Method, Path string
	handle       func(s *server, w http.ResponseWriter, r *http.Request) error
}

// Routes lists the API's routes (paths in net/http's pattern syntax,
// which is also OpenAPI's).
func Routes() []Route {
	return []Route{
		{"GET", "/openapi.json", (*server).openapi},
		{"POST", "/templates", (*server).createTemplate},
		{"GET", "/templates", (*server).listTemplates},
		{"GET", "/templates/{id}", (*server).getTemplate},
		{"DELETE", "/templates/{id}", (*server).deleteTemplate},
		{"POST", "/sandboxes", (*server).createSandbox},
		{"GET", "/sandboxes", (*server).listSandboxes},
		{"GET", "/sandboxes/{id}", (*server).getSandbox},
		{"DELETE", "/sandboxes/{id}", (*server).killSandbox},
		{"POST", "/sandboxes/{id}/pause", (*server).pauseSandbox},
		{"POST", "/sandboxes/{id}/resume", (*server).resumeSandbox},
		{"POST", "/sandboxes/{id}/exec", (*server).exec},
		{"GET", "/sandboxes/{id}/exec/{tag}", (*server).attach},
		{"GET", "/sandboxes/{id}/files", (*server).download},
		{"PUT", "/sandboxes/{id}/files", (*server).upload},
		{"GET", "/sandboxes/{id}/logs", (*server).logs},
		{"GET", "/sandboxes/{id}/network", (*server).getNetwork},
		{"GET", "/sandboxes/{id}/metrics", (*server).getUsage},
		{"PUT", "/sandboxes/{id}/network/policy", (*server).putPolicy},
		{"GET", "/sandboxes/{id}/crash", (*server).crash},
		{"POST", "/sandboxes/{id}/ports/{port}", (*server).connectPort},
		{"GET", "/host", (*server).host},
		{"GET", "/metrics", (*server).metrics},
		{"POST", "/apikeys", (*server).createAPIKey},
		{"GET", "/apikeys", (*server).listAPIKeys},
		{"DELETE", "/apikeys/{id}", (*server).deleteAPIKey},
		{"GET", "/e2b", (*server).e2bInfo},
	}
}

// exitOf is the API's exit of an agent's exit status.
func exitOf(st proto.ExitStatus) *ExitStatus {
	e := &ExitStatus{Code: st.Code, Signal: st.Signal, OOMKilled: st.OOMKilled, Reason: "exit"}
	switch {
	case st.OOMKilled:
		e.Reason = "oom"
	case st.Signal != 0:
		e.Reason = "signal"
	}
	return e
}

// Options configure a handler.
type Options struct {
	// Token, if set, is required as "Authorization: Bearer TOKEN".
	Token string
	Log   *slog.Logger
	// Metrics, if set, serves GET /metrics (package sandbox/metrics; the
	// API does not link Prometheus, as the client shares its types).
	Metrics http.Handler
	// E2B, if set, is where emberd serves its E2B-compatible API (GET
	// /e2b answers it; without it, 404).
	E2B *E2BInfo
}

type server struct {
	m    *sandbox.Manager
	log  *slog.Logger
	prom http.Handler // GET /metrics
	e2b  *E2BInfo
}

// httpError is an error with its status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// New returns the API's handler.
func New(m *sandbox.Manager, o Options) http.Handler {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{m: m, log: o.Log, prom: o.Metrics, e2b: o.E2B}
	mux := http.NewServeMux()
	paths := http.NewServeMux() // the same paths for any method: 405 rather than 404
	seen := map[string]bool{}
	for _, rt := range Routes() {
		mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) {
			if err := rt.handle(s, w, r); err != nil {
				s.fail(w, r, err)
			}
		})
		if !seen[rt.Path] {
			seen[rt.Path] = true
			paths.HandleFunc(rt.Path, func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusMethodNotAllowed, ErrorBody{Error: fmt.Sprintf("%s %s: method not allowed", r.Method, r.URL.Path)})
			})
		}
	}
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		if _, pattern := paths.Handler(r); pattern != "" {
			paths.ServeHTTP(w, r)
			return
		}
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: fmt.Sprintf("%s %s: no such route", r.Method, r.URL.Path)})
	})
	if o.Token != "" {
		next := h
		want := []byte("Bearer " + o.Token)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
				writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: "missing or wrong token: send Authorization: Bearer TOKEN"})
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	return h
}

// fail answers err with its status.
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	var se *sandbox.Error
	switch {
	case errors.As(err, &se) && se.Kind == sandbox.KindExhausted:
		secs := max(int(math.Ceil(se.RetryAfter.Seconds())), 1)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeJSON(w, http.StatusTooManyRequests, ErrorBody{Error: err.Error(), Budget: se.Budget, RetryAfterS: secs})
		return
	case errors.As(err, &he):
		status = he.status
	case sandbox.KindOf(err) == sandbox.KindInvalid:
		status = http.StatusBadRequest
	case sandbox.KindOf(err) == sandbox.KindNotFound:
		status = http.StatusNotFound
	case sandbox.KindOf(err) == sandbox.KindConflict:
		status = http.StatusConflict
	case errors.Is(err, context.Canceled):
		status = 499 // the client went away (nginx's convention); nobody reads it
	}
	if status == http.StatusInternalServerError {
		s.log.Error("request failed", append(idAttrs(r), "method", r.Method, "path", r.URL.Path, "err", err)...)
	}
	writeJSON(w, status, ErrorBody{Error: err.Error()})
}

// idAttrs names the sandbox or template of a request, for its log lines.
func idAttrs(r *http.Request) []any {
	id := r.PathValue("id")
	switch {
	case id == "":
		return nil
	case strings.HasPrefix(r.URL.Path, "/sandboxes/"):
		return []any{"sandbox", id}
	}
	return []any{"template", id}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Decode decodes a JSON request body into v, strictly; the error names
// the field at fault.
func Decode(body io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(body, MaxBody+1))
	if err != nil {
		return badRequest("body: %v", err)
	}
	if len(data) > MaxBody {
		return badRequest("body: over %d bytes", MaxBody)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return badRequest("body: empty; want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return badRequest("body: malformed JSON at byte %d: %v", syn.Offset, err)
		case errors.As(err, &typ):
			field := typ.Field
			if field == "" {
				field = "body"
			}
			return badRequest("%s: want a JSON %s, got %s", field, jsonType(typ.Type.Kind().String()), typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badRequest("%s: unknown field", strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`))
		case errors.Is(err, io.ErrUnexpectedEOF):
			return badRequest("body: truncated JSON")
		}
		return badRequest("body: %v", err)
	}
	if dec.More() {
		return badRequest("body: more than one JSON value")
	}
	return nil
}

// jsonType names a Go kind as JSON does.
func jsonType(kind string) string {
	switch kind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "number"
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	case "bool":
		return "boolean"
	}
	return kind
}

func (s *server) openapi(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(OpenAPI)
	return err
}

func (s *server) createTemplate(w http.ResponseWriter, r *http.Request) error {
	var spec sandbox.TemplateSpec
	if err := Decode(r.Body, &spec); err != nil {
		return err
	}
	t, err := s.m.BuildTemplate(r.Context(), spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *server) listTemplates(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.m.Templates()
	if err != nil {
		return err
	}
	if ts == nil {
		ts = []sandbox.Template{}
	}
	writeJSON(w, http.StatusOK, ts)
	return nil
}

func (s *server) getTemplate(w http.ResponseWriter, r *http.Request) error {
	t, err := s.m.Template(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

func (s *server) deleteTemplate(w http.ResponseWriter, r *http.Request) error {
	if err := s.m.DeleteTemplate(r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) createSandbox(w http.ResponseWriter, r *http.Request) error {
	var spec sandbox.SandboxSpec
	if err := Decode(r.Body, &spec); err != nil {
		return err
	}
	sb, err := s.m.Create(r.Context(), spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sb)
	return nil
}

func (s *server) listSandboxes(w http.ResponseWriter, r *http.Request) error {
	sbs, err := s.m.Sandboxes()
	if err != nil {
		return err
	}
	if sbs == nil {
		sbs = []sandbox.Sandbox{}
	}
	writeJSON(w, http.StatusOK, sbs)
	return nil
}

func (s *server) getSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.m.Sandbox(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sb)
	return nil
}

func (s *server) killSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, forgotten, err := s.m.Kill(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if forgotten {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeJSON(w, http.StatusOK, sb)
	return nil
}

func (s *server) pauseSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.m.Pause(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sb)
	return nil
}

func (s *server) getNetwork(w http.ResponseWriter, r *http.Request) error {
	st, err := s.m.Network(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// getUsage samples what a running sandbox's guest uses.
func (s *server) getUsage(w http.ResponseWriter, r *http.Request) error {
	u, err := s.m.Usage(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

// putPolicy changes a running sandbox's egress policy; it applies to
// packets from then on, open connections included.
func (s *server) putPolicy(w http.ResponseWriter, r *http.Request) error {
	var p network.Policy
	if err := Decode(r.Body, &p); err != nil {
		return err
	}
	sb, err := s.m.SetPolicy(r.Context(), r.PathValue("id"), p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sb)
	return nil
}

func (s *server) resumeSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.m.Resume(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sb)
	return nil
}

// eventWriter writes output as exec events, flushing each.
type eventWriter struct {
	mu     *sync.Mutex
	w      http.ResponseWriter
	stderr bool
	// started says whether the answer's header went out.
	started *bool
}

func (e eventWriter) Write(p []byte) (int, error) {
	ev := ExecEvent{Stdout: p}
	if e.stderr {
		ev = ExecEvent{Stderr: p}
	}
	return len(p), e.send(ev)
}

func (e eventWriter) send(ev ExecEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !*e.started {
		*e.started = true
		e.w.Header().Set("Content-Type", "application/x-ndjson")
		e.w.WriteHeader(http.StatusOK)
	}
	if err := json.NewEncoder(e.w).Encode(ev); err != nil {
		return err
	}
	http.NewResponseController(e.w).Flush()
	return nil
}

func (s *server) exec(w http.ResponseWriter, r *http.Request) error {
	var req sandbox.ExecRequest
	if err := Decode(r.Body, &req); err != nil {
		return err
	}
	return s.streamExec(w, func(started func(sandbox.ExecStarted), out, errw io.Writer) (proto.ExitStatus, error) {
		return s.m.ExecWith(r.Context(), r.PathValue("id"), req, started, out, errw)
	})
}

// attach is GET /sandboxes/{id}/exec/{tag}?from=OFFSET: the process's
// output again from OFFSET (default 0: all the agent holds), then as it
// comes, and its exit.
func (s *server) attach(w http.ResponseWriter, r *http.Request) error {
	var from int64
	if v := r.URL.Query().Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("from: %q: want the output offset the client has (a byte count, 0 or more)", v)
		}
		from = n
	}
	return s.streamExec(w, func(started func(sandbox.ExecStarted), out, errw io.Writer) (proto.ExitStatus, error) {
		return s.m.Attach(r.Context(), r.PathValue("id"), r.PathValue("tag"), from, started, out, errw)
	})
}

// streamExec answers with run's events as lines of JSON: the start, the
// output as it comes, the exit (or the error) last. An error before the
// start is the answer's status.
func (s *server) streamExec(w http.ResponseWriter, run func(started func(sandbox.ExecStarted), out, errw io.Writer) (proto.ExitStatus, error)) error {
	var (
		mu      sync.Mutex
		started bool
	)
	out := eventWriter{mu: &mu, w: w, started: &started}
	errw := eventWriter{mu: &mu, w: w, stderr: true, started: &started}
	st, err := run(func(e sandbox.ExecStarted) { out.send(ExecEvent{Started: &e}) }, out, errw)
	mu.Lock()
	headerSent := started
	mu.Unlock()
	if err != nil && !headerSent {
		return err
	}
	if err != nil {
		return out.send(ExecEvent{Error: err.Error(), Exit: exitOf(st)})
	}
	return out.send(ExecEvent{Exit: exitOf(st)})
}

// pathParam is the required query parameter "path".
func pathParam(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", badRequest("path: missing query parameter (the file's path in the guest)")
	}
	return p, nil
}

func (s *server) download(w http.ResponseWriter, r *http.Request) error {
	p, err := pathParam(r)
	if err != nil {
		return err
	}
	rc, err := s.m.Download(r.Context(), r.PathValue("id"), p)
	if err != nil {
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	io.Copy(w, rc) // the header is out: a failure can only cut the answer short
	return nil
}

func (s *server) upload(w http.ResponseWriter, r *http.Request) error {
	p, err := pathParam(r)
	if err != nil {
		return err
	}
	e, err := s.m.Upload(r.Context(), r.PathValue("id"), p, r.Body)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, e)
	return nil
}

func (s *server) logs(w http.ResponseWriter, r *http.Request) error {
	path, err := s.m.LogPath(r.PathValue("id"), r.URL.Query().Get("source"))
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.Copy(w, f) // as in download
	return nil
}

func (s *server) crash(w http.ResponseWriter, r *http.Request) error {
	c, err := s.m.Crash(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

func (s *server) host(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.m.Host())
	return nil
}

// metrics is the Prometheus exposition of the manager's registry.
func (s *server) metrics(w http.ResponseWriter, r *http.Request) error {
	if s.prom == nil {
		return &httpError{http.StatusNotFound, "GET /metrics: this emberd serves no metrics"}
	}
	s.prom.ServeHTTP(w, r)
	return nil
}

func (s *server) createAPIKey(w http.ResponseWriter, r *http.Request) error {
	var req APIKeyRequest
	if err := Decode(r.Body, &req); err != nil {
		return err
	}
	k, err := s.m.CreateAPIKey(req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (s *server) listAPIKeys(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.m.APIKeys()
	if err != nil {
		return err
	}
	if ks == nil {
		ks = []sandbox.APIKey{}
	}
	writeJSON(w, http.StatusOK, ks)
	return nil
}

func (s *server) deleteAPIKey(w http.ResponseWriter, r *http.Request) error {
	if err := s.m.DeleteAPIKey(r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) e2bInfo(w http.ResponseWriter, r *http.Request) error {
	if s.e2b == nil {
		return &httpError{http.StatusNotFound, "emberd serves no E2B-compatible API: start it with --e2b-addr"}
	}
	writeJSON(w, http.StatusOK, s.e2b)
	return nil
}
