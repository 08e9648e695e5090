package shim

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	eventsv1 "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Forwarding of events to containerd.
const (
	// nsMetadataKey is the ttrpc metadata key of the containerd namespace
	// (containerd's namespaces package: "containerd-namespace-ttrpc").
	nsMetadataKey = "containerd-namespace-ttrpc"
	// publishQueue bounds the events waiting to be forwarded.
	publishQueue = 128
	// publishAttempts is how often an event is tried before it is
	// dropped (containerd's own shims try 5 times).
	publishAttempts = 5
	// publishRetry is the first wait between attempts (doubled each time).
	publishRetry = 100 * time.Millisecond
)

// RemotePublisher forwards events to containerd's ttrpc events service
// (containerd.services.events.ttrpc.v1.Events/Forward) at its ttrpc
// address, in order, from a queue: a slow containerd never blocks a task
// call.
type RemotePublisher struct {
	namespace string
	client    *ttrpc.Client
	events    eventsv1.TTRPCEventsService
	queue     chan *types.Envelope
	done      chan struct{}
	log       *slog.Logger

	mu     sync.RWMutex
	closed bool
}

// NewRemotePublisher connects to containerd's ttrpc socket at address
// ("unix://" optional).
func NewRemotePublisher(address, namespace string, log *slog.Logger) (*RemotePublisher, error) {
	conn, err := net.Dial("unix", strings.TrimPrefix(address, "unix://"))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd's ttrpc socket %s: %w", address, err)
	}
	c := ttrpc.NewClient(conn)
	p := &RemotePublisher{namespace: namespace, client: c, events: eventsv1.NewTTRPCEventsClient(c),
		queue: make(chan *types.Envelope, publishQueue), done: make(chan struct{}), log: log}
	go p.run()
	return p, nil
}

// Publish queues an event.
func (p *RemotePublisher) Publish(ctx context.Context, topic string, event any) error {
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		return fmt.Errorf("event %s: %w", topic, err)
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: p.namespace, Topic: topic, Event: a}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return fmt.Errorf("event %s: the publisher is closed", topic)
	}
	select {
	case p.queue <- env:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *RemotePublisher) run() {
	defer close(p.done)
	for env := range p.queue {
		wait := publishRetry
		for i := 1; ; i++ {
			ctx := ttrpc.WithMetadata(context.Background(), ttrpc.MD{nsMetadataKey: []string{p.namespace}})
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := p.events.Forward(ctx, &eventsv1.ForwardRequest{Envelope: env})
			cancel()
			if err == nil {
				break
			}
			if i == publishAttempts {
				p.log.Error("dropping an event containerd did not take", "topic", env.Topic, "err", err)
				break
			}
			time.Sleep(wait)
			wait *= 2
		}
	}
}

// Close forwards what is queued and disconnects.
func (p *RemotePublisher) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.queue)
	}
	p.mu.Unlock()
	<-p.done
	return p.client.Close()
}
