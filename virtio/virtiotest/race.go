//go:build race

package virtiotest

// RaceEnabled reports whether the race detector is built in: it makes the
// runtime allocate where a normal build does not, so allocation-counting
// tests skip under it.
const RaceEnabled = true
