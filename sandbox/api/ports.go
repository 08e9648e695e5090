package api

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/sandbox/wire"
)

// connectPort is POST /sandboxes/{id}/ports/{port}: with Connection:
// Upgrade and Upgrade: ember-tcp (wire.PortUpgrade), emberd connects to
// that TCP port on the sandbox's loopback through its agent and answers
// 101 Switching Protocols; the connection then carries the port's bytes
// both ways, half-closes included. The sandbox needs no network.
func (s *server) connectPort(w http.ResponseWriter, r *http.Request) error {
	id, ps := r.PathValue("id"), r.PathValue("port")
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > proto.MaxPort {
		return badRequest("port %q: want 1 to %d", ps, proto.MaxPort)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), wire.PortUpgrade) || !hasToken(r.Header.Get("Connection"), "upgrade") {
		return &httpError{http.StatusUpgradeRequired, fmt.Sprintf("%s %s: send Connection: Upgrade and Upgrade: %s (ember sandbox port-forward does)", r.Method, r.URL.Path, wire.PortUpgrade)}
	}
	ac, err := s.m.Agent(r.Context(), id)
	if err != nil {
		return err
	}
	pc, err := ac.DialPort(r.Context(), port)
	if err != nil {
		var pe *proto.Error
		if errors.As(err, &pe) && pe.Code == proto.CodeUnavailable {
			return &httpError{http.StatusBadGateway, fmt.Sprintf("port %d of sandbox %s: %v", port, id, err)}
		}
		return fmt.Errorf("port %d of sandbox %s: %w", port, id, err)
	}
	defer pc.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fmt.Errorf("port %d of sandbox %s: %w", port, id, err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+wire.PortUpgrade+"\r\n\r\n"); err != nil {
		return nil // the client went away
	}
	// brw.Reader holds what the client sent after its request, if any.
	splice(conn, brw.Reader, pc)
	return nil
}

// hasToken says whether a comma-separated header value holds token.
func hasToken(v, token string) bool {
	for _, t := range strings.Split(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// splice copies client (read through from) to guest and guest to client
// until both directions ended; each side's EOF becomes the other's
// half-close, and an error ends both.
func splice(client net.Conn, from io.Reader, guest io.ReadWriteCloser) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(guest, from); err != nil {
			client.Close()
			guest.Close()
			return
		}
		if cw, ok := guest.(closeWriter); ok {
			cw.CloseWrite()
		}
	}()
	if _, err := io.Copy(client, guest); err != nil {
		client.Close()
		guest.Close()
	} else if cw, ok := client.(closeWriter); ok {
		cw.CloseWrite()
	}
	wg.Wait()
}
