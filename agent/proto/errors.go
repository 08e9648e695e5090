package proto

import (
	"errors"
	"fmt"
)

// Error codes: what kind of failure an [Error] is. They follow the Connect
// and gRPC codes by name, so that a gateway to E2B's envd (which speaks
// Connect) maps them one to one.
const (
	// CodeCanceled: the client ended the stream.
	CodeCanceled = "canceled"
	// CodeInvalid: a request field is wrong; the message names it.
	CodeInvalid = "invalid_argument"
	// CodeNotFound: the process, tag or path does not exist.
	CodeNotFound = "not_found"
	// CodeExists: what was to be created is there already.
	CodeExists = "already_exists"
	// CodePermission: the guest refused (EACCES, EPERM).
	CodePermission = "permission_denied"
	// CodeExhausted: a limit was reached (streams, watches, disk space).
	CodeExhausted = "resource_exhausted"
	// CodePrecondition: the request does not fit the state (input to a
	// process without stdin, releasing a running process).
	CodePrecondition = "failed_precondition"
	// CodeUnsupported: this agent does not know the operation (it is older
	// than the client) or the feature.
	CodeUnsupported = "unimplemented"
	// CodeUnavailable: the connection to the agent was lost.
	CodeUnavailable = "unavailable"
	// CodeInternal: anything else.
	CodeInternal = "internal"
)

// Error is a failed operation as the agent reports it, in an [End].
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is makes errors.Is(err, &Error{Code: c}) match any error with code c.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// Errorf makes an Error with a code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns err's code: its own if it is (or wraps) an *Error, else
// CodeInternal; "" for nil.
func CodeOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsNotFound says whether err has CodeNotFound.
func IsNotFound(err error) bool { return CodeOf(err) == CodeNotFound }

// IsUnsupported says whether err has CodeUnsupported: the agent is older
// than the operation.
func IsUnsupported(err error) bool { return CodeOf(err) == CodeUnsupported }
