// Package e2e holds Ember's end-to-end tests: real Linux guests booted by the
// ember binary on a real KVM. They run inside the lab (`make test` runs them
// with `go test -exec "ember-lab run --"`), where EMBER_LAB=1 is set; outside
// the lab they skip.
package e2e
