package metrics

import (
	"sort"
	"sync"
	"sync/atomic"
)

// Counter is a metric kept in process, for values no device owns (API
// request counts, startup times). Add and Inc never allocate; a Counter
// must not be copied.
//
// A Counter's value is cumulative: the Writer turns it into the increase
// since the previous flush, unless its name is a store metric, whose value
// is written as it is (set it with Store).
type Counter struct{ atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.Add(1) }

// key names one metric.
type key struct{ group, name string }

// Registry holds Counters by group and name. The zero value is ready to
// use; it is safe for concurrent use.
type Registry struct {
	mu sync.RWMutex
	m  map[key]*Counter
}

// Counter returns the counter group.name, creating it at zero on first
// use. Callers should keep the result rather than look it up per
// increment.
func (r *Registry) Counter(group, name string) *Counter {
	k := key{group, name}
	r.mu.RLock()
	c := r.m[k]
	r.mu.RUnlock()
	if c != nil {
		return c
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c = r.m[k]; c == nil {
		if r.m == nil {
			r.m = make(map[key]*Counter)
		}
		c = new(Counter)
		r.m[k] = c
	}
	return c
}

// Each calls fn with every counter's current value, sorted by group and
// name. Its signature fits Options.Collect's add.
func (r *Registry) Each(fn func(group, name string, value uint64)) {
	r.mu.RLock()
	keys := make([]key, 0, len(r.m))
	for k := range r.m {
		keys = append(keys, k)
	}
	counters := make([]*Counter, len(keys))
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].group != keys[j].group {
			return keys[i].group < keys[j].group
		}
		return keys[i].name < keys[j].name
	})
	for i, k := range keys {
		counters[i] = r.m[k]
	}
	r.mu.RUnlock()
	for i, k := range keys {
		fn(k.group, k.name, counters[i].Load())
	}
}
