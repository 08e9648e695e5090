package e2b

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"time"

	"connectrpc.com/connect"
)

// User ports: a request for host <port>-<id>.<domain> (what the SDK's
// getHost(port) gives) is proxied, HTTP and WebSocket (any Upgrade), to
// that TCP port on the sandbox's loopback, through its agent over vsock
// (agent op port.connect): the sandbox needs no network, and a server
// that listens on 127.0.0.1 only is reached too. As in E2B's default,
// user ports need no token: whoever reaches emberd's E2B listener reaches
// them (the listener is on loopback unless emberd is told otherwise).
const (
	// portIdleConns bounds the idle connections kept per sandbox port:
	// a browser opens six at most per host (RFC 9112 advises few).
	portIdleConns = 6
	// portIdleTimeout closes an idle kept connection (each holds an
	// agent stream and a socket in the guest).
	portIdleTimeout = 30 * time.Second
	// portHeaderTimeout bounds the wait for a response's headers; a
	// server that takes longer is answered 504. Long polls and streams
	// are not bounded once their headers came.
	portHeaderTimeout = 5 * time.Minute
)

// portProxy returns the reverse proxy of user ports. Its transport dials
// "<sandbox ID>:<port>" through the sandbox's agent, so kept connections
// are pooled per sandbox port.
func (g *Gateway) portProxy() *httputil.ReverseProxy {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			id, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, err := strconv.Atoi(p)
			if err != nil {
				return nil, err
			}
			ac, _, err := g.b.Agent(ctx, id)
			if err != nil {
				return nil, err
			}
			return ac.DialPort(ctx, port)
		},
		MaxIdleConnsPerHost:   portIdleConns,
		IdleConnTimeout:       portIdleTimeout,
		ResponseHeaderTimeout: portHeaderTimeout,
		// The sandbox's server answers what it answers: no gzip added.
		DisableCompression: true,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(portKey{}).(portTarget)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = net.JoinHostPort(t.id, strconv.Itoa(t.port))
			pr.Out.Host = pr.In.Host // the name the client used, as E2B's proxy keeps it
			pr.Out.Header.Del(headerSandboxID)
			pr.Out.Header.Del(headerSandboxPort)
			pr.Out.Header.Del(headerAccessToken)
			pr.SetXForwarded()
		},
		Transport:     tr,
		FlushInterval: -1, // server-sent events and streams as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(portKey{}).(portTarget)
			status := http.StatusBadGateway
			if errors.Is(err, context.DeadlineExceeded) {
				status = http.StatusGatewayTimeout
			}
			g.log.Info("e2b: user port", "sandbox", t.id, "port", t.port, "err", err)
			envdError(w, r, status, connect.CodeUnavailable, fmt.Sprintf("port %d of sandbox %s: %v", t.port, t.id, err))
		},
	}
}

// portTarget is the sandbox port a proxied request is for.
type portTarget struct {
	id   string
	port int
}

type portKey struct{}

// servePort proxies a request for a user port of sandbox id.
func (g *Gateway) servePort(w http.ResponseWriter, r *http.Request, id string, port int) {
	if _, _, err := g.b.Agent(r.Context(), id); err != nil {
		envdError(w, r, http.StatusBadGateway, connect.CodeUnavailable, fmt.Sprintf("port %d of sandbox %s: %v", port, id, err))
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), portKey{}, portTarget{id: id, port: port}))
	g.ports.ServeHTTP(w, r)
}
