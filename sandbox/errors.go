package sandbox

import (
	"errors"
	"fmt"
)

// Kind classifies a manager error for the API's status codes.
type Kind int

// Kinds of errors.
const (
	// KindInvalid is a bad request (400): Error names the field.
	KindInvalid Kind = iota + 1
	// KindNotFound is an unknown template or sandbox (404).
	KindNotFound
	// KindConflict is a request the object's state refuses (409).
	KindConflict
)

// Error is an error the caller caused.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// KindOf returns err's kind, or 0 for an internal failure.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func invalid(field, format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: field + ": " + fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{Kind: KindNotFound, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Kind: KindConflict, Msg: fmt.Sprintf(format, args...)}
}
