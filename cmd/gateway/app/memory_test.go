package app

import (
	"runtime"
	"testing"
)

// TestMemoryReleaseDue: free memory is returned only when it is more than
// releaseAfter and more than half of the live objects (a burst's leftover,
// not the headroom of a steady heap).
func TestMemoryReleaseDue(t *testing.T) {
	t.Parallel()
	m := newMemoryRelease()
	for _, c := range []struct {
		free, objects uint64
		want          bool
	}{
		{0, 0, false},
		{releaseAfter, 0, false},     // not more than releaseAfter
		{releaseAfter + 1, 0, true},  // a burst's leftover on an idle heap
		{20 << 20, 40 << 20, false},  // steady headroom: half of the objects
		{20<<20 + 1, 40 << 20, true}, // more than that
		{100 << 20, 10 << 20, true},  // after 10,000 slow clients left
		{releaseAfter + 1, 1 << 30, false},
	} {
		if got := m.due(c.free, c.objects); got != c.want {
			t.Errorf("due(free %d, objects %d) = %v, want %v", c.free, c.objects, got, c.want)
		}
	}
}

// TestMemoryReleaseReturnsFreedHeap: after a burst of garbage, check
// releases (with the real runtime figures) and the heap's free memory
// falls below releaseAfter.
func TestMemoryReleaseReturnsFreedHeap(t *testing.T) {
	m := newMemoryRelease()
	// 64 MB of 1 MB objects, then garbage: their spans stay free in the
	// heap until returned.
	burst := make([][]byte, 64)
	for i := range burst {
		burst[i] = make([]byte, 1<<20)
		burst[i][0] = 1
	}
	runtime.KeepAlive(burst)
	burst = nil
	runtime.GC()
	released := 0
	m.release = func() { released++; newMemoryRelease().release() }
	if !m.check() {
		t.Fatalf("check after a 64 MB burst: not due (free %d B, objects %d B)", m.samples[0].Value.Uint64(), m.samples[1].Value.Uint64())
	}
	if released != 1 {
		t.Fatalf("released %d times, want 1", released)
	}
	if m.check() {
		t.Fatalf("check right after a release: due again (free %d B, objects %d B)", m.samples[0].Value.Uint64(), m.samples[1].Value.Uint64())
	}
}
