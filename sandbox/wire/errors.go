package wire

import (
	"errors"
	"fmt"
	"time"
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
	// KindExhausted is a create over one of the host's budgets (429):
	// Error.Budget names it, Error.RetryAfter says when to try again.
	KindExhausted
)

// Error is an error the caller caused.
type Error struct {
	Kind Kind
	Msg  string
	// Budget and RetryAfter are a KindExhausted refusal's.
	Budget     string
	RetryAfter time.Duration
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

// invalid is a KindInvalid error naming field.
func invalid(field, format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: field + ": " + fmt.Sprintf(format, args...)}
}
