package mmds

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
)

// Header names the guest uses (case-insensitive, as Firecracker matches
// them; net/http canonicalises them).
const (
	headerToken        = "X-Metadata-Token"
	headerAWSToken     = "X-Aws-Ec2-Metadata-Token"
	headerTTL          = "X-Metadata-Token-Ttl-Seconds"
	headerAWSTTL       = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	headerForwardedFor = "X-Forwarded-For"

	contentTypeText = "text/plain"
	contentTypeJSON = "application/json"
)

// Firecracker's answers to the guest (VmmMmdsError and micro_http's
// header errors), word for word.
const (
	msgInvalidURI       = "Invalid URI."
	msgMethodNotAllowed = "Not allowed HTTP method."
	msgNoToken          = "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token."
	msgInvalidToken     = "MMDS token not valid."
	msgNoTTL            = "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime."
	fmtNotFound         = "Resource not found: %s."
	fmtUnsupportedName  = "Invalid header. Reason: Unsupported header name. Key: %s"
	fmtInvalidValue     = "Invalid header. Reason: Invalid value. Key:%s; Value:%s"
)

// Metrics are the handler's counters in Firecracker's mmds metrics group.
type Metrics struct {
	// RxNoToken and RxInvalidToken count GETs without a token and with
	// an invalid or expired one: refused under V2, and under V1 answered
	// but counted, so that an operator can see who would break under V2.
	RxNoToken, RxInvalidToken atomic.Uint64
}

// Service answers the guest's HTTP requests to the MMDS of one VM: its
// configuration (version, IMDS compatibility), its token authority, and the
// process's data store.
type Service struct {
	store      *Store
	v2         bool
	imdsCompat bool
	tokens     *TokenAuthority
	Metrics    Metrics
}

// NewService returns the MMDS of one VM; cfg must have been Normalized.
// Its token key is drawn here: each VM, and each restored clone, has its
// own.
func NewService(store *Store, cfg Config, instanceID string) (*Service, error) {
	tokens, err := NewTokenAuthority(instanceID)
	if err != nil {
		return nil, err
	}
	return &Service{store: store, v2: cfg.Version == V2, imdsCompat: cfg.IMDSCompat, tokens: tokens}, nil
}

// ServeHTTP answers one guest request with Firecracker's rules: GET reads
// the store (V2: with a valid token only), PUT /latest/api/token issues a
// token (both versions), anything else is 405.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		// MMDS requests have no body: do not read one, close after
		// answering (net/http would otherwise drain it for keep-alive).
		w.Header().Set("Connection", "close")
	}
	if r.URL.Path == "" {
		reply(w, http.StatusBadRequest, contentTypeText, msgInvalidURI)
		return
	}
	switch r.Method {
	case http.MethodGet:
		s.get(w, r)
	case http.MethodPut:
		s.putToken(w, r)
	default:
		w.Header().Set("Allow", "GET, PUT")
		reply(w, http.StatusMethodNotAllowed, contentTypeText, msgMethodNotAllowed)
	}
}

// token returns the session token the request carries, if any.
func token(r *http.Request) (string, bool) {
	for _, h := range []string{headerToken, headerAWSToken} {
		if v, ok := r.Header[h]; ok && len(v) > 0 {
			return v[0], true
		}
	}
	return "", false
}

func (s *Service) get(w http.ResponseWriter, r *http.Request) {
	tok, ok := token(r)
	switch {
	case !ok:
		s.Metrics.RxNoToken.Add(1)
		if s.v2 {
			reply(w, http.StatusUnauthorized, contentTypeText, msgNoToken)
			return
		}
	case !s.tokens.Valid(tok):
		s.Metrics.RxInvalidToken.Add(1)
		if s.v2 {
			reply(w, http.StatusUnauthorized, contentTypeText, msgInvalidToken)
			return
		}
	}
	format, ctype := FormatIMDS, contentTypeText
	if !s.imdsCompat && wantsJSON(r) {
		format, ctype = FormatJSON, contentTypeJSON
	}
	body, err := Lookup(s.store.Value(), r.URL.Path, format)
	switch err {
	case nil:
		reply(w, http.StatusOK, ctype, string(body))
	case ErrNotFound:
		reply(w, http.StatusNotFound, contentTypeText, fmt.Sprintf(fmtNotFound, r.URL.Path))
	default:
		reply(w, http.StatusNotImplemented, contentTypeText, err.Error())
	}
}

// wantsJSON reports whether the request's Accept header asks for JSON.
func wantsJSON(r *http.Request) bool {
	mt, _, _ := strings.Cut(r.Header.Get("Accept"), ";")
	return strings.EqualFold(strings.TrimSpace(mt), contentTypeJSON)
}

func (s *Service) putToken(w http.ResponseWriter, r *http.Request) {
	if _, ok := r.Header[headerForwardedFor]; ok {
		// A request relayed by a proxy in the guest does not get a
		// token (EC2's rule, Firecracker's too).
		reply(w, http.StatusBadRequest, contentTypeText, fmt.Sprintf(fmtUnsupportedName, headerForwardedFor))
		return
	}
	if pointerOf(r.URL.Path) != TokenPath {
		reply(w, http.StatusNotFound, contentTypeText, fmt.Sprintf(fmtNotFound, r.URL.Path))
		return
	}
	var name, value string
	for _, h := range []string{headerTTL, headerAWSTTL} {
		if v, ok := r.Header[h]; ok && len(v) > 0 {
			name, value = h, v[0]
			break
		}
	}
	if name == "" {
		reply(w, http.StatusBadRequest, contentTypeText, msgNoTTL)
		return
	}
	ttl, err := strconv.ParseUint(strings.TrimPrefix(value, "+"), 10, 32) // Rust's u32 parse
	if err != nil {
		reply(w, http.StatusBadRequest, contentTypeText, fmt.Sprintf(fmtInvalidValue, name, value))
		return
	}
	tok, err := s.tokens.Generate(ttl)
	if err != nil {
		reply(w, http.StatusBadRequest, contentTypeText, err.Error())
		return
	}
	w.Header().Set(name, strconv.FormatUint(ttl, 10))
	reply(w, http.StatusOK, contentTypeText, tok)
}

func reply(w http.ResponseWriter, status int, ctype, body string) {
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write([]byte(body))
}
