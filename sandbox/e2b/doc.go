// Package e2b is emberd's E2B-compatible layer: E2B's JS and Python SDKs
// (the `e2b` package) run unchanged against one Ember host, pointed at it
// with environment variables (`ember e2b env` prints them):
//
//	E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:3000 E2B_API_KEY=e2b_...
//
// One listener (emberd --e2b-addr, plain HTTP/1.1 or TLS, off by default) serves
// both halves; a request that names a sandbox (the E2b-Sandbox-Id header
// the SDK sends to envd, or a host name <port>-<id>.<domain>) goes to the
// envd gateway, any other to the control plane. Facts of the protocol:
// ../shared/reference/e2b-facts.md (observed from e2b@2.51.0).
//
// # Control plane
//
// E2B's sandbox REST routes as the SDK calls them, mapped onto the
// sandbox.Manager of the same emberd (never onto the VMM):
//
//	POST /v2/sandboxes, POST /sandboxes (older SDKs)   Manager.Create; templateID names an Ember template,
//	                                                   timeout (default 300 s; 15 s for v1) its TimeoutS,
//	                                                   envVars its Env, metadata its Metadata
//	GET /v2/sandboxes, GET /sandboxes                  Manager.Sandboxes: running and paused ones, filtered by
//	                                                   metadata, state, template, startedAfter; ordered by start
//	                                                   (order), paged by limit and nextToken (X-Next-Token)
//	GET /sandboxes/{id}                                Manager.Sandbox (ended sandboxes are 404, as in E2B)
//	DELETE /sandboxes/{id}                             Manager.Kill
//	POST /sandboxes/{id}/timeout                       Manager.SetTimeout: ends it that many seconds from now
//	POST /sandboxes/{id}/pause                         Manager.Pause (409 if paused); the VM stays in memory
//	POST /v2/sandboxes/{id}/connect                    Manager.Resume of a paused one (201, with the time it had
//	                                                   left or the timeout given), or a running one's timeout
//	                                                   extended if the new end is later (200)
//	POST /sandboxes/{id}/resume (older SDKs)           Manager.Resume (409 if running)
//	GET /sandboxes/{id}/metrics                        one sample taken now by the agent (see Metrics)
//
// Every request needs an X-API-KEY that emberd made (`ember apikey
// create`; only its SHA-256 is stored, in emberd's bbolt database). Errors
// are E2B's bodies, {"code": <status>, "message": "..."}, with the same
// status (the SDK reads 404 and 409 from code). What Ember cannot honour
// is refused with a 400 naming the field (autoPause, autoResume,
// volumeMounts, mcp, network rules, resuming with memory: false) rather
// than ignored. A sandbox's cpuCount and memoryMB are its template's,
// diskSizeMB its root filesystem's; one without a timeout (made through
// Ember's own API) ends at 9999-12-31.
//
// # envd gateway
//
// envd is E2B's agent in each sandbox; Ember's guests run ember-agent
// (package guest/agent) with Ember's own protocol (agent/proto), and the
// gateway translates, one envd call to one agent stream, over the
// sandbox's vsock (agent/client):
//
//	process.Process Start, Connect   exec.start / exec.attach (from now on): start{pid}, data{stdout|stderr|pty},
//	                                 end{exitCode, exited, status}, keepalive every Keepalive-Ping-Interval
//	process.Process List             exec.list (running processes)
//	SendInput, CloseStdin            exec.input (data, EOF)
//	SendSignal                       exec.signal, to the process group
//	Update (pty size)                exec.resize
//	filesystem.Filesystem Stat, MakeDir, Move, ListDir, Remove, WatchDir
//	                                 fs.stat, fs.mkdir, fs.move, fs.list, fs.remove, fs.watch
//	GET /files, POST /files          fs.read, fs.write (multipart or octet-stream, gzip)
//	GET /health                      204 while the sandbox runs, else 502
//
// RPCs are the Connect protocol served by connectrpc.com/connect with a
// JSON codec: unary calls and server streams, over HTTP/1.1 as the SDK
// sends them without TLS. The messages are Go structs written from
// E2B's .proto files with their proto3 JSON names (envdtypes.go), not
// generated: generating needs protoc or buf and E2B's .proto files, which
// this build does not have, and the SDK only ever speaks JSON
// (useBinaryFormat: false), so the protobuf runtime would carry only
// the descriptors. The price is that the binary protobuf and gRPC
// encodings are not served.
//
// Every request but /health needs the sandbox's own access token
// (X-Access-Token; /files also takes envd's URL signature, and a signed
// URL needs no sandbox ID: the gateway finds the sandbox whose token
// signed it). Tokens are HMAC-SHA256 of the sandbox ID under a secret
// kept in emberd's database, so they survive emberd restarts with the
// sandboxes. A sandbox that is not running answers 502, as E2B's proxy
// does, which the SDK reads as "the sandbox is gone".
//
// envdVersion is EnvdVersion (0.5.7): the highest version whose features
// all work through the gateway. 0.6.2 adds per-file metadata, which the
// agent does not store; the SDK itself then refuses metadata and watch
// entries with a clear error. Processes run as the agent's default user
// (the image's) unless the SDK names one; the SDK names none from 0.4.0 on.
//
// # User ports
//
// A request whose host is <port>-<id>.<domain> (the SDK's getHost(port))
// for any port but envd's is proxied, HTTP and WebSocket (any Upgrade), to
// that TCP port on the sandbox's loopback through its agent (agent op
// port.connect, over vsock): the sandbox needs no network interface, and a
// server bound to 127.0.0.1 only is reached too. As in E2B's default, user
// ports need no token. emberd's default domain for a loopback listener is
// localhost:<listener port>, and names under localhost are the loopback
// (RFC 6761), so http://8000-<id>.localhost:3000/ works on this host with
// no DNS for curl and browsers (other programs: libnss-myhostname, or a
// lookup of their own). A port nobody listens on answers 502.
//
// # Admission
//
// A create that admission refuses (sandbox.KindExhausted) answers 429 with
// an integer Retry-After, which the SDK waits and retries (three times by
// default) before raising its RateLimitError.
//
// # TLS
//
// emberd --e2b-tls-cert and --e2b-tls-key put the listener behind TLS,
// offering HTTP/2 then HTTP/1.1 by ALPN; the SDK speaks HTTP/2 only over
// TLS, and connect-go serves the same handlers on both.
//
// # Metrics
//
// GET /sandboxes/{id}/metrics (the SDK's getMetrics) answers one sample
// taken by the sandbox's agent when asked (agent op sys.metrics: CPU
// share since the previous sample, memory from /proc/meminfo, the root
// filesystem from statfs): Ember keeps no history of a guest's use.
package e2b

import (
	"log/slog"
	"net/http"

	"github.com/embervm/ember/sandbox"
)

// SecretName is the name of the secret (sandbox.Manager.Secret) the
// access tokens derive from.
const SecretName = "e2b-envd-access-token"

// Options configure New.
type Options struct {
	// Domain is the "domain" of sandboxes in answers (E2B_DOMAIN; empty:
	// null, and the SDK uses its own).
	Domain string
	Log    *slog.Logger
}

// New returns the handler of emberd's E2B-compatible listener: the
// control plane and the envd gateway.
func New(m *sandbox.Manager, o Options) (http.Handler, error) {
	return newHandler(m, o, ManagerBackend{M: m})
}

// newHandler is New with the gateway's backend given (tests put a
// stand-in agent behind it).
func newHandler(m *sandbox.Manager, o Options, b Backend) (http.Handler, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	secret, err := m.Secret(SecretName)
	if err != nil {
		return nil, err
	}
	tokens, err := NewTokens(secret)
	if err != nil {
		return nil, err
	}
	gw := NewGateway(b, tokens, o.Log)
	cp := newAPI(m, b, tokens, o.Domain, o.Log)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsEnvdRequest(r) || isSignedFiles(r) {
			gw.ServeHTTP(w, r)
			return
		}
		cp.ServeHTTP(w, r)
	}), nil
}

// isSignedFiles says whether r is a signed /files URL (uploadUrl,
// downloadUrl), which names no sandbox.
func isSignedFiles(r *http.Request) bool {
	return r.URL.Path == "/files" && r.URL.Query().Get("signature") != ""
}
