package lab

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// A lab fault ends the lab VM and whatever ran in it. When the command is
// a Go test binary (go test -exec "ember-lab run --"), ember-lab follows
// its -test.v output and runs it again without the top-level tests that
// already ended, so that a fault costs the test it hit, not the whole
// suite. A test that failed in an earlier attempt still fails the run.

// testFlagPrefix starts every flag of a Go test binary.
const testFlagPrefix = "-test."

// testSkipFlag is the test binary's flag for tests not to run (Go 1.20+).
const testSkipFlag = testFlagPrefix + "skip"

// testEndLine matches the line that ends a top-level test in -test.v
// output (subtests' lines are indented); go test -json's test2json mode
// starts it with a ^V framing byte.
var testEndLine = regexp.MustCompile(`^\x16?--- (PASS|FAIL|SKIP): ([^\s/]+) \(`)

// isGoTestBinary reports whether argv runs a Go test binary, as go test
// -exec does (it always passes -test.* flags).
func isGoTestBinary(argv []string) bool {
	return slices.ContainsFunc(argv[1:], func(a string) bool { return strings.HasPrefix(a, testFlagPrefix) })
}

// testProgress records the top-level tests that ended in a test binary's
// output. It is an io.Writer fed the command's output.
type testProgress struct {
	mu      sync.Mutex
	partial []byte
	ended   []string // in the order they ended
	failed  []string
}

func (p *testProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		if m := testEndLine.FindSubmatch(p.partial[:i]); m != nil {
			name := string(m[2])
			if !slices.Contains(p.ended, name) {
				p.ended = append(p.ended, name)
			}
			if string(m[1]) == "FAIL" && !slices.Contains(p.failed, name) {
				p.failed = append(p.failed, name)
			}
		}
		p.partial = p.partial[i+1:]
	}
	// A line longer than this is no test's end line.
	const maxLine = 4096
	if len(p.partial) > maxLine {
		p.partial = p.partial[:0]
	}
	return len(b), nil
}

// Ended returns the top-level tests that have ended, and those that failed.
func (p *testProgress) Ended() (ended, failed []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ended), slices.Clone(p.failed)
}

// skipEnded returns argv with -test.skip extended to the tests in ended
// (exact names). A -test.skip already given is kept as an alternative; if
// it has a '/' (a subtest pattern, which alternation would change), argv
// is returned unchanged and ok is false.
func skipEnded(argv []string, ended []string) (out []string, ok bool) {
	if len(ended) == 0 {
		return argv, true
	}
	quoted := make([]string, len(ended))
	for i, n := range ended {
		quoted[i] = regexp.QuoteMeta(n)
	}
	pattern := "^(" + strings.Join(quoted, "|") + ")$"
	out = []string{argv[0]}
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		var old string
		switch {
		case strings.HasPrefix(a, testSkipFlag+"="):
			old = strings.TrimPrefix(a, testSkipFlag+"=")
		case a == testSkipFlag && i+1 < len(argv):
			i++
			old = argv[i]
		default:
			out = append(out, a)
			continue
		}
		if strings.Contains(old, "/") {
			return argv, false
		}
		if old != "" {
			pattern += "|" + old
		}
	}
	return append(out, testSkipFlag+"="+pattern), true
}
