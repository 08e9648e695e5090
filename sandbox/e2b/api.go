package e2b

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/sandbox"
)

// Limits and defaults of E2B's API (its OpenAPI schema, as the SDK's
// dist/index.d.ts carries it).
const (
	// defaultTimeoutV2 is NewSandboxV2.timeout's default (300 s);
	// defaultTimeoutV1 is NewSandbox's and ResumedSandbox's (15 s).
	defaultTimeoutV2 = 300
	defaultTimeoutV1 = 15
	// defaultListLimit and maxListLimit bound a page of GET /v2/sandboxes
	// (E2B's defaults: 100 and 100).
	defaultListLimit = 100
	maxListLimit     = 100
	// maxBody bounds a JSON request body.
	maxBody = 1 << 20
	// clientID is the deprecated clientID field's value.
	clientID = "ember"
	// headerAPIKey carries the API key; headerNextToken the paging cursor.
	headerAPIKey    = "X-API-KEY"
	headerNextToken = "X-Next-Token"
	// diskMB is one MB of diskSizeMB (MiB, as E2B counts).
	diskMB = 1 << 20
)

// never is the endAt of a sandbox without a timeout (one made with
// Ember's own API): E2B's schema has no "none".
var never = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// api is the control plane: E2B's sandbox routes over a sandbox.Manager.
type api struct {
	m *sandbox.Manager
	// b reaches the sandboxes' agents (for metrics): the gateway's, so
	// that both halves of the API reach the same agents (sandbox.Manager's
	// Usage would go around a Backend that stands in for them).
	b      Backend
	tokens Tokens
	domain string
	log    *slog.Logger
	mux    *http.ServeMux
}

func newAPI(m *sandbox.Manager, b Backend, tokens Tokens, domain string, log *slog.Logger) *api {
	a := &api{m: m, b: b, tokens: tokens, domain: domain, log: log, mux: http.NewServeMux()}
	routes := []struct {
		pattern string
		h       func(w http.ResponseWriter, r *http.Request) error
	}{
		{"POST /v2/sandboxes", a.createV2},
		{"POST /sandboxes", a.createV1},
		{"GET /v2/sandboxes", a.list},
		{"GET /sandboxes", a.listV1},
		{"GET /sandboxes/{id}", a.get},
		{"DELETE /sandboxes/{id}", a.kill},
		{"POST /sandboxes/{id}/timeout", a.setTimeout},
		{"POST /sandboxes/{id}/pause", a.pause},
		{"POST /sandboxes/{id}/resume", a.resume},
		{"POST /v2/sandboxes/{id}/connect", a.connect},
		{"GET /sandboxes/{id}/metrics", a.metrics},
	}
	for _, rt := range routes {
		a.mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := rt.h(w, r); err != nil {
				a.fail(w, r, err)
			}
		})
	}
	return a
}

// apiError is an error with its status.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func sandboxNotFound(id string) error {
	return &apiError{http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		status = ae.status
	case sandbox.KindOf(err) == sandbox.KindInvalid:
		status = http.StatusBadRequest
	case sandbox.KindOf(err) == sandbox.KindNotFound:
		status = http.StatusNotFound
	case sandbox.KindOf(err) == sandbox.KindConflict:
		status = http.StatusConflict
	case sandbox.KindOf(err) == sandbox.KindExhausted:
		// Admission refused the create: the SDK retries after an integer
		// Retry-After (whole seconds, RFC 9110 section 10.2.3), then
		// raises its RateLimitError.
		status = http.StatusTooManyRequests
		var se *sandbox.Error
		errors.As(err, &se)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(se.RetryAfter, time.Second).Seconds()))))
	}
	if status == http.StatusInternalServerError {
		a.log.Error("E2B API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, errorBody{Code: status, Message: err.Error()})
}

// ServeHTTP checks the API key and routes.
func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get(headerAPIKey)
	if key == "" {
		writeJSON(w, http.StatusUnauthorized, errorBody{http.StatusUnauthorized, "missing X-API-KEY header: make a key with `ember apikey create`"})
		return
	}
	if _, err := a.m.CheckAPIKey(key); err != nil {
		if !errors.Is(err, sandbox.ErrBadAPIKey) {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusUnauthorized, errorBody{http.StatusUnauthorized, "invalid API key"})
		return
	}
	if _, pattern := a.mux.Handler(r); pattern == "" {
		writeJSON(w, http.StatusNotFound, errorBody{http.StatusNotFound, fmt.Sprintf("%s %s: no such route in Ember's E2B-compatible API", r.Method, r.URL.Path)})
		return
	}
	a.mux.ServeHTTP(w, r)
}

// decode decodes a JSON body into v. Unknown fields are ignored (E2B's
// SDKs add fields over time); wrong types are not. An empty body is {}.
func decode(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return badRequest("body: %v", err)
	}
	if len(data) > maxBody {
		return badRequest("body: over %d bytes", maxBody)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) && typ.Field != "" {
			return badRequest("%s: want a JSON %s, got %s", typ.Field, typ.Type.Kind(), typ.Value)
		}
		return badRequest("body: %v", err)
	}
	return nil
}

// newSandbox is E2B's NewSandboxV2 and NewSandbox (v1, with secure).
type newSandbox struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int              `json:"timeout"`
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
	AutoPause  *bool             `json:"autoPause"`
	AutoResume *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	Secure              *bool           `json:"secure"`
	AllowInternetAccess *bool           `json:"allow_internet_access"`
	Network             json.RawMessage `json:"network"`
	VolumeMounts        json.RawMessage `json:"volumeMounts"`
	MCP                 json.RawMessage `json:"mcp"`
}

// sandboxBody is E2B's Sandbox: the answer of a create, connect or
// resume.
type sandboxBody struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	Domain             *string `json:"domain"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
}

// listedSandbox is E2B's ListedSandbox; detail adds SandboxDetail's
// fields.
type listedSandbox struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	ClientID    string            `json:"clientID"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int64             `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
}

type sandboxDetail struct {
	listedSandbox
	EnvdAccessToken string  `json:"envdAccessToken"`
	Domain          *string `json:"domain"`
}

// used says whether a raw JSON field holds something (not absent, null,
// {} or []).
func used(raw json.RawMessage) bool {
	switch strings.TrimSpace(string(raw)) {
	case "", "null", "{}", "[]":
		return false
	}
	return true
}

func (a *api) createV2(w http.ResponseWriter, r *http.Request) error {
	return a.create(w, r, defaultTimeoutV2)
}

func (a *api) createV1(w http.ResponseWriter, r *http.Request) error {
	return a.create(w, r, defaultTimeoutV1)
}

// checkTimeout checks a timeout in seconds.
func checkTimeout(t int) error {
	if t < 1 {
		return badRequest("timeout: %d: want at least 1 second", t)
	}
	return nil
}

func (a *api) create(w http.ResponseWriter, r *http.Request, defaultTimeout int) error {
	var req newSandbox
	if err := decode(r, &req); err != nil {
		return err
	}
	switch {
	case req.TemplateID == "":
		return badRequest("templateID: missing: name an Ember template (ember template ls)")
	case req.AutoPause != nil && *req.AutoPause:
		return badRequest("autoPause: Ember ends a sandbox at its timeout; pausing it then is not supported")
	case req.AutoResume != nil && req.AutoResume.Enabled:
		return badRequest("autoResume: not supported by Ember (resume with Sandbox.connect)")
	case used(req.VolumeMounts):
		return badRequest("volumeMounts: volumes are not supported by Ember")
	case used(req.MCP):
		return badRequest("mcp: MCP gateways are not supported by Ember")
	case used(req.Network):
		return badRequest("network: per-sandbox network rules are not supported by Ember's E2B API yet")
	}
	timeout := defaultTimeout
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	if err := checkTimeout(timeout); err != nil {
		return err
	}
	sb, err := a.m.Create(r.Context(), sandbox.SandboxSpec{Template: req.TemplateID, TimeoutS: timeout, Env: req.EnvVars, Metadata: req.Metadata})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a.sandboxBody(sb))
	return nil
}

func (a *api) sandboxBody(sb sandbox.Sandbox) sandboxBody {
	return sandboxBody{SandboxID: sb.ID, TemplateID: sb.Template, ClientID: clientID, EnvdVersion: EnvdVersion,
		EnvdAccessToken: a.tokens.For(sb.ID), Domain: a.domainPtr()}
}

func (a *api) domainPtr() *string {
	if a.domain == "" {
		return nil
	}
	d := a.domain
	return &d
}

// listed describes sb as E2B lists it (t caches templates).
func (a *api) listed(sb sandbox.Sandbox, t map[string]sandbox.Template) listedSandbox {
	tpl, ok := t[sb.Template]
	if !ok {
		tpl, _ = a.m.Template(sb.Template)
		t[sb.Template] = tpl
	}
	end := never
	switch {
	case sb.Deadline != nil:
		end = *sb.Deadline
	case sb.State == sandbox.StatePaused && sb.RemainingMS > 0:
		end = time.Now().Add(time.Duration(sb.RemainingMS) * time.Millisecond)
	}
	var disk int64
	if tpl.Spec.Rootfs != "" {
		if st, err := os.Stat(tpl.Spec.Rootfs); err == nil {
			disk = st.Size() / diskMB
		}
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listedSandbox{SandboxID: sb.ID, TemplateID: sb.Template, ClientID: clientID, Metadata: md,
		StartedAt: sb.CreatedAt.UTC(), EndAt: end.UTC(), State: sb.State, CPUCount: max(tpl.Spec.VCPUs, 1),
		MemoryMB: tpl.Spec.MemoryMiB, DiskSizeMB: disk, EnvdVersion: EnvdVersion}
}

// visible says whether E2B's API shows sb: E2B knows running and paused
// sandboxes only.
func visible(sb sandbox.Sandbox) bool {
	return sb.State == sandbox.StateRunning || sb.State == sandbox.StatePaused
}

// liveSandbox returns a running or paused sandbox, or E2B's 404.
func (a *api) liveSandbox(id string) (sandbox.Sandbox, error) {
	sb, err := a.m.Sandbox(id)
	if sandbox.KindOf(err) == sandbox.KindNotFound || (err == nil && !visible(sb)) {
		return sb, sandboxNotFound(id)
	}
	return sb, err
}

// listQuery is GET /v2/sandboxes's query.
type listQuery struct {
	metadata     map[string]string
	states       map[string]bool
	template     string
	startedAfter time.Time
	desc         bool
	limit        int
	after        *cursor
}

// cursor is a page's position: the last sandbox sent, by start time and
// ID. nextToken is its base64 (opaque to the SDK).
type cursor struct {
	At time.Time `json:"t"`
	ID string    `json:"id"`
}

func (c cursor) token() string {
	data, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(data)
}

// parseListQuery reads the query; the error names the parameter.
func parseListQuery(q url.Values, v2 bool) (listQuery, error) {
	lq := listQuery{metadata: map[string]string{}, states: map[string]bool{}, desc: true, limit: defaultListLimit}
	if md := q.Get("metadata"); md != "" {
		// The SDK encodes each key and value, then the pairs as a query
		// string: two decodings.
		pairs, err := url.ParseQuery(md)
		if err != nil {
			return lq, badRequest("metadata: %q: want URL-encoded key=value pairs: %v", md, err)
		}
		for k, vs := range pairs {
			key, err1 := url.QueryUnescape(k)
			val, err2 := url.QueryUnescape(vs[len(vs)-1])
			if err1 != nil || err2 != nil {
				return lq, badRequest("metadata: %q: bad escape", md)
			}
			lq.metadata[key] = val
		}
	}
	for _, s := range q["state"] {
		for _, st := range strings.Split(s, ",") {
			switch st {
			case sandbox.StateRunning, sandbox.StatePaused:
				lq.states[st] = true
			case "":
			default:
				return lq, badRequest("state: %q: want running or paused", st)
			}
		}
	}
	if len(lq.states) == 0 {
		lq.states[sandbox.StateRunning] = true
		if v2 {
			lq.states[sandbox.StatePaused] = true
		}
	}
	lq.template = q.Get("template")
	if s := q.Get("startedAfter"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return lq, badRequest("startedAfter: %q: want an RFC 3339 time", s)
		}
		lq.startedAfter = t
	}
	switch o := q.Get("order"); o {
	case "", "desc":
	case "asc":
		lq.desc = false
	default:
		return lq, badRequest("order: %q: want asc or desc", o)
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			return lq, badRequest("limit: %q: want 1..%d", s, maxListLimit)
		}
		lq.limit = n
	}
	if s := q.Get("nextToken"); s != "" {
		var c cursor
		data, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || json.Unmarshal(data, &c) != nil || c.ID == "" {
			return lq, badRequest("nextToken: %q: not a token this API gave", s)
		}
		lq.after = &c
	}
	return lq, nil
}

// before says whether x comes before y in the listing's order.
func (lq listQuery) before(x, y cursor) bool {
	if !x.At.Equal(y.At) {
		return x.At.Before(y.At) != lq.desc
	}
	return (x.ID < y.ID) != lq.desc
}

func (a *api) list(w http.ResponseWriter, r *http.Request) error { return a.listSandboxes(w, r, true) }

func (a *api) listV1(w http.ResponseWriter, r *http.Request) error {
	return a.listSandboxes(w, r, false)
}

func (a *api) listSandboxes(w http.ResponseWriter, r *http.Request, v2 bool) error {
	lq, err := parseListQuery(r.URL.Query(), v2)
	if err != nil {
		return err
	}
	sbs, err := a.m.Sandboxes()
	if err != nil {
		return err
	}
	var match []sandbox.Sandbox
	for _, sb := range sbs {
		if !lq.states[sb.State] || (lq.template != "" && sb.Template != lq.template) || sb.CreatedAt.Before(lq.startedAfter) {
			continue
		}
		ok := true
		for k, v := range lq.metadata {
			if got, has := sb.Metadata[k]; !has || got != v {
				ok = false
				break
			}
		}
		if ok {
			match = append(match, sb)
		}
	}
	cur := func(sb sandbox.Sandbox) cursor { return cursor{At: sb.CreatedAt, ID: sb.ID} }
	sort.Slice(match, func(i, j int) bool { return lq.before(cur(match[i]), cur(match[j])) })
	if lq.after != nil {
		i := sort.Search(len(match), func(i int) bool { return lq.before(*lq.after, cur(match[i])) })
		match = match[i:]
	}
	if v2 && len(match) > lq.limit {
		match = match[:lq.limit]
		w.Header().Set(headerNextToken, cur(match[len(match)-1]).token())
	}
	tpls := map[string]sandbox.Template{}
	out := make([]listedSandbox, 0, len(match))
	for _, sb := range match {
		out = append(out, a.listed(sb, tpls))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *api) get(w http.ResponseWriter, r *http.Request) error {
	sb, err := a.liveSandbox(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxDetail{listedSandbox: a.listed(sb, map[string]sandbox.Template{}),
		EnvdAccessToken: a.tokens.For(sb.ID), Domain: a.domainPtr()})
	return nil
}

func (a *api) kill(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if _, err := a.liveSandbox(id); err != nil {
		return err
	}
	if _, _, err := a.m.Kill(r.Context(), id); err != nil {
		if sandbox.KindOf(err) == sandbox.KindConflict {
			return sandboxNotFound(id) // it ended meanwhile
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// timeoutBody is SandboxTimeoutRequest, ConnectSandbox and
// ResumedSandbox.
type timeoutBody struct {
	Timeout   *int  `json:"timeout"`
	Memory    *bool `json:"memory"`
	AutoPause *bool `json:"autoPause"`
}

func (a *api) setTimeout(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	var req timeoutBody
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Timeout == nil {
		return badRequest("timeout: missing (seconds)")
	}
	if err := checkTimeout(*req.Timeout); err != nil {
		return err
	}
	if _, err := a.liveSandbox(id); err != nil {
		return err
	}
	if _, err := a.m.SetTimeout(r.Context(), id, time.Duration(*req.Timeout)*time.Second); err != nil {
		return a.ended(id, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ended turns the conflict of a sandbox that ended during a request into
// E2B's 404.
func (a *api) ended(id string, err error) error {
	if sandbox.KindOf(err) == sandbox.KindConflict {
		if sb, e := a.m.Sandbox(id); e == nil && !visible(sb) {
			return sandboxNotFound(id)
		}
	}
	return err
}

func (a *api) pause(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	sb, err := a.liveSandbox(id)
	if err != nil {
		return err
	}
	if sb.State == sandbox.StatePaused {
		return &apiError{http.StatusConflict, fmt.Sprintf("sandbox %q is already paused", id)}
	}
	if _, err := a.m.Pause(r.Context(), id); err != nil {
		return a.ended(id, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resume is the older SDKs' POST /sandboxes/{id}/resume: 409 if running.
func (a *api) resume(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	var req timeoutBody
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.AutoPause != nil && *req.AutoPause {
		return badRequest("autoPause: Ember ends a sandbox at its timeout; pausing it then is not supported")
	}
	sb, err := a.liveSandbox(id)
	if err != nil {
		return err
	}
	if sb.State != sandbox.StatePaused {
		return &apiError{http.StatusConflict, fmt.Sprintf("sandbox %q is already running", id)}
	}
	timeout := defaultTimeoutV1
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	if err := checkTimeout(timeout); err != nil {
		return err
	}
	sb, err = a.resumeWith(r, id, timeout)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a.sandboxBody(sb))
	return nil
}

// resumeWith resumes a paused sandbox with a new timeout.
func (a *api) resumeWith(r *http.Request, id string, timeout int) (sandbox.Sandbox, error) {
	if _, err := a.m.SetTimeout(r.Context(), id, time.Duration(timeout)*time.Second); err != nil {
		return sandbox.Sandbox{}, a.ended(id, err)
	}
	sb, err := a.m.Resume(r.Context(), id)
	return sb, a.ended(id, err)
}

// connect is POST /v2/sandboxes/{id}/connect: resume a paused sandbox
// (201), or extend a running one's timeout if the new end is later (200).
func (a *api) connect(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	var req timeoutBody
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Memory != nil && !*req.Memory {
		return badRequest("memory: false (resume by rebooting from disk) is not supported by Ember")
	}
	if req.Timeout != nil {
		if err := checkTimeout(*req.Timeout); err != nil {
			return err
		}
	}
	sb, err := a.liveSandbox(id)
	if err != nil {
		return err
	}
	if sb.State == sandbox.StatePaused {
		if req.Timeout != nil {
			sb, err = a.resumeWith(r, id, *req.Timeout)
		} else {
			sb, err = a.m.Resume(r.Context(), id) // with the time it had left
			err = a.ended(id, err)
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, a.sandboxBody(sb))
		return nil
	}
	if req.Timeout != nil {
		d := time.Duration(*req.Timeout) * time.Second
		if sb.Deadline != nil && time.Now().Add(d).After(*sb.Deadline) {
			if sb, err = a.m.SetTimeout(r.Context(), id, d); err != nil {
				return a.ended(id, err)
			}
		}
	}
	writeJSON(w, http.StatusOK, a.sandboxBody(sb))
	return nil
}

// sandboxMetric is E2B's SandboxMetric.
type sandboxMetric struct {
	Timestamp     string  `json:"timestamp"`
	TimestampUnix int64   `json:"timestampUnix"`
	CPUCount      int     `json:"cpuCount"`
	CPUUsedPct    float64 `json:"cpuUsedPct"`
	MemUsed       uint64  `json:"memUsed"`
	MemTotal      uint64  `json:"memTotal"`
	DiskUsed      uint64  `json:"diskUsed"`
	DiskTotal     uint64  `json:"diskTotal"`
}

// metrics is GET /sandboxes/{id}/metrics?start&end (unix seconds): Ember
// keeps no history of a guest's use, so the answer is one sample taken
// now by the sandbox's agent (CPU share since the previous sample), or
// none when now is outside [start, end] or the sandbox is paused.
func (a *api) metrics(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	sb, err := a.liveSandbox(id)
	if err != nil {
		return err
	}
	now := time.Now().Unix()
	for _, q := range []struct {
		name   string
		before bool
	}{{"start", false}, {"end", true}} {
		v := r.URL.Query().Get(q.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return badRequest("%s: %q is not a unix time in seconds", q.name, v)
		}
		if (q.before && now > n) || (!q.before && now < n) {
			writeJSON(w, http.StatusOK, []sandboxMetric{})
			return nil
		}
	}
	if sb.State != sandbox.StateRunning {
		writeJSON(w, http.StatusOK, []sandboxMetric{})
		return nil
	}
	ac, _, err := a.b.Agent(r.Context(), id)
	if err != nil {
		return a.ended(id, err)
	}
	m, err := ac.Metrics(r.Context())
	if err != nil {
		return fmt.Errorf("sandbox %s: sampling its metrics: %w", id, err)
	}
	writeJSON(w, http.StatusOK, []sandboxMetric{{
		Timestamp: m.Time.UTC().Format(time.RFC3339Nano), TimestampUnix: m.Time.Unix(),
		CPUCount: m.CPUs, CPUUsedPct: m.CPUUsedPct, MemUsed: m.MemUsed, MemTotal: m.MemTotal,
		DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}})
	return nil
}
