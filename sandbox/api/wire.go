package api

import "github.com/embervm/ember/sandbox/wire"

// The API's own bodies live in package wire with the manager's, so that
// the client links neither this server nor the manager; they keep their
// names here.
type (
	// ErrorBody is wire.ErrorBody: every error's body.
	ErrorBody = wire.ErrorBody
	// ExecEvent is wire.ExecEvent: one line of an exec's answer.
	ExecEvent = wire.ExecEvent
	// ExitStatus is wire.ExitStatus: a process's end.
	ExitStatus = wire.ExitStatus
	// E2BInfo is wire.E2BInfo: the answer of GET /e2b.
	E2BInfo = wire.E2BInfo
	// APIKeyRequest is wire.APIKeyRequest: the body of POST /apikeys.
	APIKeyRequest = wire.APIKeyRequest
)
