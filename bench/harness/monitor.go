package harness

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Snapshot is one look at a gateway's admin endpoints.
type Snapshot struct {
	At         time.Time
	Goroutines float64
	HeapInuse  float64
	HeapAlloc  float64 // go_memstats_heap_alloc_bytes: live objects plus unswept garbage
	HeapObjs   float64
	// NextGC is go_memstats_next_gc_bytes, the heap goal the last GC set:
	// with GOGC=100 it is about twice the heap that GC found live, the
	// one memory figure that garbage not yet collected does not inflate.
	NextGC     float64
	QueueDepth float64
	Fallback   float64 // store_fallback_active
	GCCycles   float64 // go_gc_duration_seconds_count
	RSS        float64 // process_resident_memory_bytes
	StackInuse float64 // go_memstats_stack_inuse_bytes
	Ready      int     // /readyz status (0: no answer)
	ReadyBody  string
	Err        error
}

// Degraded reports whether /readyz said "degraded".
func (s Snapshot) Degraded() bool { return strings.Contains(s.ReadyBody, "degraded") }

// Look takes one snapshot of the gateway at adminURL.
func Look(ctx context.Context, adminURL string) Snapshot {
	s := Snapshot{At: time.Now()}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := FetchMetrics(ctx, adminURL)
	if err != nil {
		s.Err = err
		return s
	}
	s.Goroutines = m.Sum("go_goroutines")
	s.HeapInuse = m.Sum("go_memstats_heap_inuse_bytes")
	s.HeapAlloc = m.Sum("go_memstats_heap_alloc_bytes")
	s.HeapObjs = m.Sum("go_memstats_heap_objects")
	s.NextGC = m.Sum("go_memstats_next_gc_bytes")
	s.QueueDepth = m.Sum("fusioo_gateway_queue_depth")
	s.Fallback = m.Sum("fusioo_gateway_store_fallback_active")
	s.GCCycles = m.Sum("go_gc_duration_seconds_count")
	s.RSS = m.Sum("process_resident_memory_bytes")
	s.StackInuse = m.Sum("go_memstats_stack_inuse_bytes")
	s.Ready, s.ReadyBody, s.Err = Readyz(ctx, adminURL)
	return s
}

// Monitor polls a gateway every interval until stopped.
type Monitor struct {
	mu     sync.Mutex
	snaps  []Snapshot
	cancel context.CancelFunc
	done   chan struct{}
}

// StartMonitor starts polling adminURL.
func StartMonitor(adminURL string, every time.Duration) *Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Monitor{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s := Look(ctx, adminURL)
			if ctx.Err() != nil {
				return
			}
			m.mu.Lock()
			m.snaps = append(m.snaps, s)
			m.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// Stop ends polling and returns every snapshot.
func (m *Monitor) Stop() []Snapshot {
	m.cancel()
	<-m.done
	return m.Snapshots()
}

// Snapshots returns the snapshots so far.
func (m *Monitor) Snapshots() []Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Snapshot(nil), m.snaps...)
}

// Between returns the snapshots taken in [from, to).
func Between(ss []Snapshot, from, to time.Time) []Snapshot {
	var out []Snapshot
	for _, s := range ss {
		if !s.At.Before(from) && s.At.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

// MaxOf returns the largest value of f over ss (0 when empty).
func MaxOf(ss []Snapshot, f func(Snapshot) float64) float64 {
	var m float64
	for i, s := range ss {
		if v := f(s); i == 0 || v > m {
			m = v
		}
	}
	return m
}

// FirstWhere returns the first snapshot at or after from for which ok
// holds.
func FirstWhere(ss []Snapshot, from time.Time, ok func(Snapshot) bool) (Snapshot, bool) {
	for _, s := range ss {
		if !s.At.Before(from) && ok(s) {
			return s, true
		}
	}
	return Snapshot{}, false
}

// WaitFor polls the gateway until ok holds or timeout passes, and returns
// the last snapshot.
func WaitFor(ctx context.Context, adminURL string, timeout time.Duration, ok func(Snapshot) bool) (Snapshot, bool) {
	deadline := time.Now().Add(timeout)
	for {
		s := Look(ctx, adminURL)
		if s.Err == nil && ok(s) {
			return s, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return s, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
