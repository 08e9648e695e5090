package sandbox

import (
	"fmt"

	"github.com/embervm/ember/sandbox/wire"
)

// Error and its kinds are the API's (package wire): the kind picks the
// answer's status code.
type (
	// Kind is wire.Kind.
	Kind = wire.Kind
	// Error is wire.Error: an error the caller caused.
	Error = wire.Error
)

// Kinds of errors (wire.Kind).
const (
	KindInvalid   = wire.KindInvalid
	KindNotFound  = wire.KindNotFound
	KindConflict  = wire.KindConflict
	KindExhausted = wire.KindExhausted
)

// KindOf returns err's kind, or 0 for an internal failure.
func KindOf(err error) Kind { return wire.KindOf(err) }

func invalid(field, format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: field + ": " + fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{Kind: KindNotFound, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Kind: KindConflict, Msg: fmt.Sprintf(format, args...)}
}
