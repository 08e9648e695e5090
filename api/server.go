package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/vmm"
)

// Defaults of Options.
const (
	// DefaultID is Firecracker's default instance id (--id).
	DefaultID = "anonymous-instance"
	// DefaultVersion is vmm_version when Options.Version is empty.
	DefaultVersion = "dev"
	// FirecrackerAPIVersion is the Firecracker release whose API Ember
	// implements; GET /version answers it as firecracker_version, so that
	// clients choosing features by Firecracker version choose right.
	FirecrackerAPIVersion = "1.16.0"
	// AppName is GET /'s app_name.
	AppName = "Ember"
)

const (
	contentTypeJSON   = "application/json"
	headerDeprecation = "Deprecation"
	// readHeaderTimeout bounds how long a client may take to send its
	// request headers.
	readHeaderTimeout = 10 * time.Second
)

// Options configure a Server.
type Options struct {
	// ID is the instance id of GET / (default DefaultID).
	ID string
	// Version is vmm_version in GET / (default DefaultVersion).
	Version string
	// MaxPayload is the largest request body accepted, in bytes
	// (default DefaultMaxPayload).
	MaxPayload int
	// Logger receives a line per request; nil uses slog.Default().
	Logger *slog.Logger

	// Hooks for what the process configures outside the VMM. Each may be
	// nil; the API then refuses PUT /logger and PUT /metrics, and
	// FlushMetrics does nothing (as Firecracker's does when no metrics
	// are configured).

	// ConfigureLogger applies PUT /logger (or a config file's "logger").
	// The server calls it at most once.
	ConfigureLogger func(Logger) error
	// ConfigureMetrics applies PUT /metrics (or a config file's
	// "metrics"). The server calls it at most once.
	ConfigureMetrics func(Metrics) error
	// FlushMetrics writes the metrics now (the FlushMetrics action, after
	// boot). Firecracker answers 204 when no metrics are configured; an
	// error returned here is a 400.
	FlushMetrics func() error
	// CountRequest is called once per request with its method and its
	// route ("/drives/{id}"), or its path if no route matched.
	CountRequest func(method, path string)

	// PrepareImage turns an Ember image block (PUT /ember/image, a config
	// file's "ember-image") into the files to boot it with, and returns a
	// function that removes what it made, which the server calls if the
	// answer cannot be applied. It runs before boot, at most once. Nil:
	// the image block is refused as not supported.
	PrepareImage func(EmberImage) (PreparedImage, func(), error)

	// MMDS is the process's MMDS data store, which PUT, PATCH and GET
	// /mmds edit and read at any time; the VMM must be given the same one
	// (vmm.Config.MMDSStore). Nil: a store of the default limit, which
	// only the API sees.
	MMDS *mmds.Store
}

// Server serves Firecracker's API for one VMM.
type Server struct {
	b    vmm.Backend
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	mu      sync.Mutex
	logger  *Logger  // as configured, nil before
	metrics *Metrics // as configured, nil before
	// image is the ember image block's files once applied; imageBusy
	// says one is being prepared. bootArgsSet says the boot source's
	// boot_args were given (they win over the image's).
	image       *PreparedImage
	imageBusy   bool
	bootArgsSet bool
	httpSrv     *http.Server
}

// New returns a server for b.
func New(b vmm.Backend, opts Options) *Server {
	if opts.ID == "" {
		opts.ID = DefaultID
	}
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.MMDS == nil {
		opts.MMDS = mmds.NewStore(mmds.DefaultSizeLimit)
	}
	s := &Server{b: b, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.routes()
	return s
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s }

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", contentTypeJSON)
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete:
		s.mux.ServeHTTP(w, r)
	default:
		s.count(r.Method, r.URL.Path)
		s.reply(w, r, nil, invalidPath(r))
	}
}

// Serve serves the API on ln until Shutdown; it returns nil then.
func (s *Server) Serve(ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.mu.Lock()
	s.httpSrv = srv
	s.mu.Unlock()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: serving on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Shutdown stops Serve, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.httpSrv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// MaxSocketPath is the longest unix socket path: sun_path holds 108 bytes
// with the terminating NUL (unix(7)).
const MaxSocketPath = 107

// ListenUnix listens on a unix socket at path. A socket left there by a
// process that is gone is removed; any other existing file, or a socket a
// live process serves, is refused.
func ListenUnix(path string) (net.Listener, error) {
	if len(path) > MaxSocketPath {
		return nil, fmt.Errorf("api socket %s: the path is %d bytes, a unix socket's is at most %d (use a shorter folder, or a symlink to it)", path, len(path), MaxSocketPath)
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	case st.Mode()&os.ModeSocket == 0:
		return nil, fmt.Errorf("api socket %s: the path exists and is not a socket", path)
	default:
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return ln, nil
}

// removeStaleSocket removes the socket at path if nothing listens on it.
func removeStaleSocket(path string) error {
	conn, err := net.Dial("unix", path)
	if err == nil {
		conn.Close()
		return fmt.Errorf("api socket %s: another process is serving on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("api socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// call is one request as an endpoint sees it.
type call struct {
	r          *http.Request
	body       []byte
	deprecated bool // the request used a deprecated field
}

// endpoint handles a call; a nil answer is a 204, anything else a 200 with
// the answer as JSON.
type endpoint func(c *call) (any, error)

// handle registers e for pattern ("PUT /drives/{id}").
func (s *Server) handle(pattern string, e endpoint) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s.count(r.Method, routeOf(r))
		c := &call{r: r}
		body, err := s.readBody(w, r)
		if err != nil {
			s.reply(w, r, nil, err)
			return
		}
		c.body = body
		answer, err := e(c)
		if c.deprecated {
			w.Header().Set(headerDeprecation, "true")
		}
		s.reply(w, r, answer, err)
	})
}

// routeOf is the route r matched ("/drives/{id}"), or its path.
func routeOf(r *http.Request) string {
	if _, route, ok := strings.Cut(r.Pattern, " "); ok {
		return strings.TrimSuffix(route, "{$}")
	}
	return r.URL.Path
}

func (s *Server) count(method, path string) {
	if s.opts.CountRequest != nil {
		s.opts.CountRequest(method, path)
	}
}

// readBody reads the request body, within the payload limit. GETs and
// DELETEs must have none, PUTs and PATCHes one.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := int64(s.opts.MaxPayload)
	if r.ContentLength > limit {
		w.Header().Set("Connection", "close")
		return nil, fmt.Errorf(fmtTooLarge, r.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, fmt.Errorf("Request payload is larger than the limit of %d allowed by server.", limit)
		}
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	switch r.Method {
	case http.MethodGet:
		if len(body) > 0 {
			return nil, errors.New(msgGetBody)
		}
	case http.MethodPut, http.MethodPatch:
		if len(body) == 0 {
			return nil, fmt.Errorf(fmtEmptyBody, r.Method)
		}
	}
	return body, nil
}

// reply writes the answer or the fault, and logs the request.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, answer any, err error) {
	status := http.StatusNoContent
	var data []byte
	var se statusError
	raw, isRaw := answer.(rawJSON)
	switch {
	case err != nil:
		status = http.StatusBadRequest
		if errors.As(err, &se) {
			status = se.status
		}
		data, _ = json.Marshal(Error{FaultMessage: faultMessage(err)})
	case isRaw:
		status, data = http.StatusOK, raw
	case answer != nil:
		var merr error
		if data, merr = json.Marshal(answer); merr != nil {
			status = http.StatusInternalServerError
			data, _ = json.Marshal(Error{FaultMessage: "encoding the answer: " + merr.Error()})
		} else {
			status = http.StatusOK
		}
	}
	w.WriteHeader(status)
	if data != nil {
		w.Write(data)
	}
	// Reads are polled (GET / especially): they log at Debug.
	level, attrs := slog.LevelInfo, []any{"method", r.Method, "path", r.URL.Path, "status", status}
	switch {
	case err != nil:
		level, attrs = slog.LevelWarn, append(attrs, "fault", faultMessage(err))
	case r.Method == http.MethodGet:
		level = slog.LevelDebug
	}
	s.log.Log(r.Context(), level, "api request", attrs...)
}

// invalidPath is the fault for an unknown path or a wrong method.
func invalidPath(r *http.Request) error {
	return fmt.Errorf(fmtInvalidPath, r.Method, r.URL.Path)
}
