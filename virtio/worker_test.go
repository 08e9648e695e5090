package virtio

import (
	"testing"
	"time"
)

// TestWorkerDo: Do runs a function on the worker's goroutine, between
// handler calls, and on the caller's when the worker is not running.
func TestWorkerDo(t *testing.T) {
	n, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	state := 0 // owned by the worker goroutine once it runs
	handled := make(chan int, 1)
	w, err := NewWorker(&Activation{Notify: []*EventFD{n}}, nil, func(uint32) { state++; handled <- state })
	if err != nil {
		t.Fatal(err)
	}
	w.Do(func() { state = 10 }) // not started: runs here
	if state != 10 {
		t.Fatalf("Do on a stopped worker: state %d", state)
	}
	w.Start()
	defer w.Stop()
	w.Do(func() { state = 100 })
	n.Signal()
	select {
	case got := <-handled:
		if got != 101 {
			t.Fatalf("handler saw %d, want 101 (Do's write before it)", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler not called")
	}
}

// TestWorkerPause: a paused worker handles no notification until Resume,
// then handles the one that arrived meanwhile; Stop ends a paused worker.
func TestWorkerPause(t *testing.T) {
	n, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	handled := make(chan struct{}, 4)
	w, err := NewWorker(&Activation{Notify: []*EventFD{n}}, nil, func(uint32) { handled <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	w.Pause()
	w.Pause() // a second pause is a no-op
	n.Signal()
	select {
	case <-handled:
		t.Fatal("a paused worker ran its handler")
	case <-time.After(100 * time.Millisecond):
	}
	w.Resume()
	select {
	case <-handled:
	case <-time.After(5 * time.Second):
		t.Fatal("the notification sent while paused was not handled after Resume")
	}
	w.Pause()
	// Do on a paused worker runs at once (a drive update while the VM is
	// paused must not wait for the resume).
	ran := make(chan struct{})
	go func() { w.Do(func() {}); close(ran) }()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Do hung on a paused worker")
	}
	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop hung on a paused worker")
	}
}
