package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// FrameType says what a frame carries (header byte 0).
type FrameType uint8

// Frame types of protocol version 1. A receiver skips a frame of a type it
// does not know (its length is in the header), so a later version may add
// frame types; one whose meaning must not be lost is sent only to a peer
// that announced the matching feature in its Hello.
const (
	// FrameHello is the first frame each way, on stream 0: the client's
	// [Hello], then the agent's [HelloReply].
	FrameHello FrameType = 1
	// FrameOpen opens a stream (client to agent only): an [Open] naming the
	// operation and carrying its request.
	FrameOpen FrameType = 2
	// FrameMsg is one JSON message on a stream: replies and events from the
	// agent, controls ([ExecControl]) from the client.
	FrameMsg FrameType = 3
	// FrameData is raw bytes on a stream, on the channel named in the
	// header: a process's stdin (channel [ChanStdin]), stdout or stderr, a
	// file's contents ([ChanBody]).
	FrameData FrameType = 4
	// FrameWindow grants the peer more bytes on a stream: its payload is a
	// big-endian uint32 increment (see [Window]).
	FrameWindow FrameType = 5
	// FrameClose half-closes the header's channel: the sender sends no
	// more Data on it (stdin's EOF, the end of an upload).
	FrameClose FrameType = 6
	// FrameEnd ends a stream for good. From the agent it is the outcome:
	// an empty payload for success, or an [End] with an error. From the
	// client it cancels the operation.
	FrameEnd FrameType = 7
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameOpen:
		return "open"
	case FrameMsg:
		return "msg"
	case FrameData:
		return "data"
	case FrameWindow:
		return "window"
	case FrameClose:
		return "close"
	case FrameEnd:
		return "end"
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

// Channels of Data and Close frames (header byte 1).
const (
	// ChanStdin is a process's standard input (client to agent).
	ChanStdin = 0
	// ChanBody is a file's contents or a tar stream, either way.
	ChanBody = 0
	// ChanStdout is a process's standard output, or its terminal's output.
	ChanStdout = 1
	// ChanStderr is a process's standard error (pipes only).
	ChanStderr = 2
)

// Sizes and limits of protocol version 1.
const (
	// HeaderSize is the frame header: type (1 byte), channel (1),
	// reserved (2, sent as zero, ignored), stream ID (4, big-endian),
	// payload length (4, big-endian).
	HeaderSize = 12
	// MaxFrame bounds any payload; a longer frame ends the connection.
	// An Open carries a command line and environment, which Linux caps at
	// a few MiB together (ARG_MAX); 1 MiB is plenty and bounds what one
	// frame may make the receiver allocate.
	MaxFrame = 1 << 20
	// MaxMessage bounds a Msg or Hello payload (a JSON message): well under
	// Window, so one message always fits in a stream's window.
	MaxMessage = 128 << 10
	// MaxData is the largest Data payload a sender makes: small enough
	// that streams interleave fairly on the connection, large enough that
	// the header costs nothing (0.04%).
	MaxData = 32 << 10
	// Window is each stream's initial credit, each way: the bytes of Msg
	// and Data frames (payload plus HeaderSize each) the sender may have
	// in flight before the receiver grants more with a Window frame. It
	// bounds what a receiver buffers per stream, whatever the sender does.
	Window = 256 << 10
	// MaxWindow bounds a stream's credit after Window grants; a peer that
	// grants more is broken and the connection ends.
	MaxWindow = 1 << 30
)

// Frame is one frame: the header fields and the payload.
type Frame struct {
	Type    FrameType
	Channel uint8
	Stream  uint32
	Payload []byte
}

// Cost is what a Msg or Data frame takes from its stream's window: the
// payload and the header, so that even empty frames are paid for and a
// receiver's memory per stream stays bounded.
func (f *Frame) Cost() int { return HeaderSize + len(f.Payload) }

// ErrFrameTooLarge is a header announcing more than MaxFrame bytes.
var ErrFrameTooLarge = errors.New("agent protocol: frame larger than the limit")

// AppendFrame appends f's encoding to b.
func AppendFrame(b []byte, f *Frame) []byte {
	var h [HeaderSize]byte
	h[0] = byte(f.Type)
	h[1] = f.Channel
	binary.BigEndian.PutUint32(h[4:8], f.Stream)
	binary.BigEndian.PutUint32(h[8:12], uint32(len(f.Payload)))
	b = append(b, h[:]...)
	return append(b, f.Payload...)
}

// ReadFrame reads one frame from r. The payload is allocated only after
// the header's length was checked against MaxFrame; a frame of a type this
// version does not know is returned like any other (the caller skips it).
func ReadFrame(r io.Reader) (Frame, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: FrameType(h[0]), Channel: h[1], Stream: binary.BigEndian.Uint32(h[4:8])}
	n := binary.BigEndian.Uint32(h[8:12])
	if n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: %s frame of %d bytes (limit %d)", ErrFrameTooLarge, f.Type, n, MaxFrame)
	}
	if n > 0 {
		f.Payload = make([]byte, n)
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// Check applies the rules of each known frame type that the header alone
// can show; a violation is a broken peer and ends the connection.
func (f *Frame) Check() error {
	switch f.Type {
	case FrameHello:
		if f.Stream != 0 {
			return fmt.Errorf("agent protocol: hello on stream %d, want 0", f.Stream)
		}
		if len(f.Payload) > MaxMessage {
			return fmt.Errorf("agent protocol: hello of %d bytes (limit %d)", len(f.Payload), MaxMessage)
		}
		return nil
	case FrameOpen, FrameMsg, FrameData, FrameWindow, FrameClose, FrameEnd:
		if f.Stream == 0 {
			return fmt.Errorf("agent protocol: %s frame on stream 0", f.Type)
		}
	default:
		return nil // unknown: skipped by the receiver
	}
	switch f.Type {
	case FrameMsg, FrameEnd:
		if len(f.Payload) > MaxMessage {
			return fmt.Errorf("agent protocol: %s of %d bytes (limit %d)", f.Type, len(f.Payload), MaxMessage)
		}
	case FrameData:
		if len(f.Payload) == 0 {
			return errors.New("agent protocol: empty data frame")
		}
	case FrameWindow:
		if len(f.Payload) != 4 {
			return fmt.Errorf("agent protocol: window frame of %d bytes, want 4", len(f.Payload))
		}
		if n := binary.BigEndian.Uint32(f.Payload); n == 0 || n > MaxWindow {
			return fmt.Errorf("agent protocol: window increment %d", n)
		}
	case FrameClose:
		if len(f.Payload) != 0 {
			return fmt.Errorf("agent protocol: close frame with %d bytes of payload", len(f.Payload))
		}
	}
	return nil
}

// WindowIncrement is the increment a (checked) Window frame grants.
func (f *Frame) WindowIncrement() int { return int(binary.BigEndian.Uint32(f.Payload)) }

// WindowPayload encodes a Window frame's increment.
func WindowPayload(n uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, n)
}
