// Package mux runs the agent protocol's streams over one connection (see
// package agent/proto for the frames): the handshake, stream lifecycle,
// per-stream flow control, and the order of frames. The host's client and
// the guest's agent both use it: [Client] and [Server] make a [Session],
// whose streams ([Stream]) are one operation each.
//
// Design:
//
//   - One reader goroutine per session reads frames and queues each on its
//     stream. It never blocks on anything but the connection: a stream's
//     queue holds at most the window this side granted (a frame beyond it
//     ends the session), and the control frames the reader owes (window
//     grants, refusals of streams) are written by a second goroutine. Two
//     peers both blocked writing while neither reads cannot happen.
//   - Senders wait for window per stream, then write whole frames under
//     one lock, so streams interleave frame by frame (Data frames are at
//     most 32 KiB) and one stream's frames keep their order.
//   - Receivers give credit back as they consume (Recv), batched to one
//     Window frame per half window. RecvHold lets a consumer keep reading
//     a stream while one kind of item waits for a slow sink, crediting it
//     only once written: the agent uses it for a process's stdin, whose
//     acknowledgements share the stream.
//   - A stream ends when either side sends End; both forget it then, and
//     late frames for it are ignored. On the agent a client's End cancels
//     the handler's context. A lost connection ends every stream with
//     CodeUnavailable.
//   - Limits: MaxStreams open streams per connection on the agent (more
//     are refused with CodeExhausted); Opens must come with increasing
//     stream IDs.
//
// Nothing here times out: a stream lives until a side ends it or the
// connection goes.
package mux
