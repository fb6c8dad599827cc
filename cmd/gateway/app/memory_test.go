package app

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// TestMemoryReleaseDue: free memory is returned only when it is more than
// releaseAfter and more than half of the live objects (a burst's leftover,
// not the headroom of a steady heap).
func TestMemoryReleaseDue(t *testing.T) {
	t.Parallel()
	m := newMemoryRelease(0)
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
	m := newMemoryRelease(0)
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
	m.release = func() { released++; newMemoryRelease(0).release() }
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

// TestHeapFloorPercent: GOGC is raised to put the goal at the floor for a
// small live heap, no higher than puts Go's minimum goal at the floor, and
// left at the process's own setting for a live heap at the floor or above,
// before any collection, or with GOGC off or 0.
func TestHeapFloorPercent(t *testing.T) {
	t.Parallel()
	const mb = 1 << 20
	f := newHeapFloor(16 * mb)
	f.base = 100
	for _, c := range []struct {
		live, stacks, globals uint64
		want                  int
	}{
		{4 * mb, 0, 0, 300},           // 4 + 4×3 = 16
		{3 * mb, 1 * mb, 0, 325},      // 3 + 4×3.25 = 16
		{1 * mb, 1 * mb, 1 * mb, 400}, // 500 would put the minimum goal at 20 MB
		{1 * mb, 0, 0, 400},           // 1,500 likewise
		{12 * mb, 0, 0, 100},          // (16-12)/12 is under base
		{16 * mb, 0, 0, 100},          // a live heap at the floor
		{40 * mb, 1 * mb, 0, 100},     // 100,000 tokens: as Go would
		{0, 1 * mb, 0, 100},           // no collection yet
	} {
		if got := f.percent(c.live, c.stacks, c.globals); got != c.want {
			t.Errorf("percent(live %d, stacks %d, globals %d MB) = %d, want %d", c.live/mb, c.stacks/mb, c.globals/mb, got, c.want)
		}
	}
	f.base = 300 // GOGC=300: never below it
	if got := f.percent(12*mb, 0, 0); got != 300 {
		t.Errorf("with GOGC=300, percent = %d, want 300", got)
	}
	for _, base := range []int{-1, 0} { // GOGC=off, GOGC=0
		f.base = base
		if got := f.percent(1*mb, 0, 0); got != base {
			t.Errorf("with GOGC %d, percent = %d, want %d", base, got, base)
		}
	}
}

// TestHeapFloorRun: with the runtime's own figures, a collection of this
// test's small heap raises GOGC above 100, and the end of Run gives the
// process its setting back.
func TestHeapFloorRun(t *testing.T) {
	f := newHeapFloor(64 << 20)
	set := make(chan int, 16)
	f.set = func(p int) int { set <- p; return 0 }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	deadline := time.After(30 * time.Second)
	for raised := false; !raised; {
		runtime.GC()
		select {
		case p := <-set:
			if p <= 100 {
				t.Fatalf("GOGC set to %d after a collection of a small heap, want above 100", p)
			}
			raised = true
		case <-time.After(10 * time.Millisecond): // collect again: Run may have armed after this one
		case <-deadline:
			t.Fatal("no GOGC set within 30 s of collections")
		}
	}
	cancel()
	<-done
	var last int
	for len(set) > 0 {
		last = <-set
	}
	if want := int(f.samples[1].Value.Uint64()); last != want {
		t.Errorf("after Run: GOGC set to %d, want the process's own %d", last, want)
	}
}
