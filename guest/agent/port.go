package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// portDialTimeout bounds the connect to a guest port: on loopback a
// connect is answered at once (accepted or refused) unless the listener's
// backlog is full.
const portDialTimeout = 5 * time.Second

// portConnect connects the stream to a TCP port on the guest's loopback
// (proto.OpPortConnect): IPv4's first, then IPv6's, as a server may
// listen on either.
func (s *Server) portConnect(st *mux.Stream) error {
	req, err := decode[proto.PortRequest](st)
	if err != nil {
		return err
	}
	ctx := st.Context()
	port := strconv.Itoa(req.Port)
	var d net.Dialer
	var conn net.Conn
	var errs []string
	for _, host := range []string{"127.0.0.1", "::1"} {
		dctx, cancel := context.WithTimeout(ctx, portDialTimeout)
		conn, err = d.DialContext(dctx, "tcp", net.JoinHostPort(host, port))
		cancel()
		if err == nil {
			break
		}
		errs = append(errs, err.Error())
	}
	if err != nil {
		return proto.Errorf(proto.CodeUnavailable, "nothing answers on port %d in the guest: %s", req.Port, strings.Join(errs, "; "))
	}
	defer conn.Close()
	// The stream's end (the host's End, or its connection lost) closes
	// the connection, and so ends both directions.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := st.SendMsg(proto.Empty{}); err != nil {
		return err
	}
	// Guest to host: until the guest side's EOF (then a Close) or an error.
	up := make(chan error, 1)
	go func() {
		buf := make([]byte, proto.MaxData)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				if werr := st.Write(proto.ChanBody, buf[:n]); werr != nil {
					up <- werr
					return
				}
			}
			if errors.Is(err, io.EOF) {
				up <- st.CloseChannel(proto.ChanBody)
				return
			}
			if err != nil {
				up <- err
				return
			}
		}
	}()
	// Host to guest: until the host's Close (then a half-close) or the
	// stream's end.
	down := func() error {
		for {
			it, err := st.Recv(ctx)
			if err != nil {
				return err
			}
			switch {
			case it.Kind == mux.KindData && it.Channel == proto.ChanBody:
				if _, err := conn.Write(it.Payload); err != nil {
					return err
				}
			case it.Kind == mux.KindClose && it.Channel == proto.ChanBody:
				if cw, ok := conn.(interface{ CloseWrite() error }); ok {
					return cw.CloseWrite()
				}
				return nil
			}
		}
	}()
	if down != nil {
		conn.Close() // ends the reader too
		<-up
		if errors.Is(down, io.EOF) || ctx.Err() != nil {
			return nil // the host ended the stream
		}
		return down
	}
	// The host half-closed: the guest side may go on sending.
	if err := <-up; err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
