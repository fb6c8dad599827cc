package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// How many refused tokens' keys are remembered, and for how long: enough
// for a client retrying a revoked token, bounded whatever a hostile client
// sends (about 100 bytes each).
const (
	rejectedKeysMax = 1 << 16
	rejectedFor     = 5 * time.Minute
)

// rejectedKeys is a bounded set of the keys of tokens the upstream
// answered 10003 or 20007, each for a while: their requests go under the
// anonymous limit, so a stream of made-up tokens costs no per-key state.
// When full, the oldest mark goes first.
type rejectedKeys struct {
	size  atomic.Int64 // len(until), so the common case takes no lock
	mu    sync.RWMutex
	ttl   time.Duration
	until map[string]time.Time
	// ring holds the marks in insertion order, for eviction; it grows
	// to max as marks come, so a gateway no client sent a bad token to
	// keeps no 1 MB of empty slots for every collection to scan.
	ring []string
	max  int
	next int // the oldest mark's index once ring is full
}

func newRejectedKeys(n int, ttl time.Duration) *rejectedKeys {
	return &rejectedKeys{ttl: ttl, until: make(map[string]time.Time), max: n}
}

func (r *rejectedKeys) add(key string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.until[key]; !ok {
		if len(r.ring) < r.max {
			r.ring = append(r.ring, key)
		} else {
			delete(r.until, r.ring[r.next])
			r.ring[r.next] = key
			r.next = (r.next + 1) % len(r.ring)
		}
	}
	r.until[key] = now.Add(r.ttl)
	r.size.Store(int64(len(r.until)))
}

func (r *rejectedKeys) has(key string, now time.Time) bool {
	if r.size.Load() == 0 {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.until[key]
	return ok && now.Before(t)
}

// remove clears key's mark (its slot in the ring is reused in turn).
func (r *rejectedKeys) remove(key string) {
	r.mu.Lock()
	delete(r.until, key)
	r.size.Store(int64(len(r.until)))
	r.mu.Unlock()
}
