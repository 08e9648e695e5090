package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// watchMask is what a watch asks inotify for: the changes envd reports.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

// inotifyBuffer holds many events per read(2) (each is 16 bytes and a
// name of at most NAME_MAX+1).
const inotifyBuffer = 64 << 10

// watcher is one watch stream's inotify instance: one watch per directory
// (inotify is not recursive), the directory of each by descriptor.
type watcher struct {
	fd        int // the inotify descriptor (not f.Fd(), which would make it blocking)
	f         *os.File
	root      string
	recursive bool
	dirs      map[int32]string // watch descriptor → path relative to root
}

// watch sends the changes under a directory until the client ends the
// stream. A client that reads slowly holds the events back in the
// kernel's queue (bounded by fs.inotify.max_queued_events); when it
// overflows the client gets an "overflow" event and the events are lost.
func (s *Server) watch(st *mux.Stream) error {
	req, err := decode[proto.WatchRequest](st)
	if err != nil {
		return err
	}
	root, err := s.dirPath(req.Path, req.User)
	if err != nil {
		return err
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	w := &watcher{fd: fd, f: os.NewFile(uintptr(fd), "inotify"), root: root, recursive: req.Recursive, dirs: map[int32]string{}}
	defer w.f.Close()
	stop := context.AfterFunc(st.Context(), func() { w.f.Close() })
	defer stop()
	if err := w.add("."); err != nil {
		return err
	}
	if req.Recursive {
		if err := w.addTree(".", nil); err != nil {
			return err
		}
	}
	if err := st.SendMsg(proto.WatchEvent{Started: true}); err != nil {
		return err
	}
	buf := make([]byte, inotifyBuffer)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if st.Context().Err() != nil {
				return context.Cause(st.Context())
			}
			return fmt.Errorf("reading inotify: %w", err)
		}
		events, done := w.parse(buf[:n])
		for _, ev := range events {
			if err := st.SendMsg(ev); err != nil {
				return err
			}
		}
		if done {
			return proto.Errorf(proto.CodeNotFound, "%s was removed", root)
		}
	}
}

// add watches the directory rel (relative to the root).
func (w *watcher) add(rel string) error {
	wd, err := unix.InotifyAddWatch(w.fd, filepath.Join(w.root, rel), watchMask)
	if errors.Is(err, unix.ENOSPC) {
		return proto.Errorf(proto.CodeExhausted, "too many directories to watch under %s (raise fs.inotify.max_user_watches)", w.root)
	}
	if err != nil {
		return fmt.Errorf("watching %s: %w", filepath.Join(w.root, rel), err)
	}
	w.dirs[int32(wd)] = rel
	return nil
}

// addTree watches every directory under rel. With created set it also
// reports what it finds as created: a directory made after the watch
// started may have filled before its own watch was in place.
func (w *watcher) addTree(rel string, created *[]proto.WatchEvent) error {
	return filepath.WalkDir(filepath.Join(w.root, rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile
		}
		r, _ := filepath.Rel(w.root, p)
		if r == rel {
			return nil
		}
		if created != nil {
			*created = append(*created, proto.WatchEvent{Name: r, Type: proto.EventCreate})
		}
		if d.IsDir() {
			if err := w.add(r); err != nil && proto.CodeOf(err) == proto.CodeExhausted {
				return err
			}
		}
		return nil
	})
}

// parse turns a read's inotify events into watch events; done reports
// that the watched directory itself is gone.
func (w *watcher) parse(b []byte) (events []proto.WatchEvent, done bool) {
	for len(b) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(b[0:4]))
		mask := binary.NativeEndian.Uint32(b[4:8])
		nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
		if unix.SizeofInotifyEvent+nameLen > len(b) {
			break // the kernel never splits an event; be safe anyway
		}
		name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen]), "\x00")
		b = b[unix.SizeofInotifyEvent+nameLen:]

		if mask&unix.IN_Q_OVERFLOW != 0 {
			events = append(events, proto.WatchEvent{Type: proto.EventOverflow})
			continue
		}
		dir, ok := w.dirs[wd]
		if !ok {
			continue
		}
		if mask&unix.IN_IGNORED != 0 {
			delete(w.dirs, wd)
			if dir == "." {
				done = true
			}
			continue
		}
		if mask&unix.IN_DELETE_SELF != 0 {
			continue // its parent reports the remove
		}
		rel := filepath.Join(dir, name)
		typ := ""
		switch {
		case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
			typ = proto.EventCreate
		case mask&unix.IN_DELETE != 0:
			typ = proto.EventRemove
		case mask&unix.IN_MOVED_FROM != 0:
			typ = proto.EventRename
		case mask&unix.IN_MODIFY != 0:
			typ = proto.EventWrite
		case mask&unix.IN_ATTRIB != 0:
			typ = proto.EventChmod
		default:
			continue
		}
		events = append(events, proto.WatchEvent{Name: rel, Type: typ})
		if w.recursive && typ == proto.EventCreate && mask&unix.IN_ISDIR != 0 {
			if err := w.add(rel); err == nil {
				_ = w.addTree(rel, &events)
			}
		}
	}
	return events, done
}
