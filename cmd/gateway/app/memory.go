package app

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// releaseAfter is how much freed heap memory the gateway keeps from the
// OS at most, beyond half of what its live objects take, unless its heap
// floor (heapFloor) is larger.
const releaseAfter = 8 << 20

// memoryRelease returns the heap memory a burst left behind to the OS.
// Go's background scavenger keeps free memory up to about the heap goal
// (twice the live heap), so after 10,000 slow clients are gone the
// process would hold tens of MB it no longer needs, for good. When the
// heap's free memory (not yet returned) exceeds both keep and half of its
// objects, a full collection returns all of it
// (debug.FreeOSMemory): after a burst that is once, and under steady load
// at most once per check, a collection among the many the load causes.
type memoryRelease struct {
	keep    uint64 // releaseAfter, or the heap floor when larger
	samples []metrics.Sample
	release func() // debug.FreeOSMemory; a test's stand-in
}

// newMemoryRelease returns a memoryRelease for a gateway whose heap floor
// is floor bytes (0: none): the garbage the floor lets grow between
// collections is not a burst's leftover.
func newMemoryRelease(floor uint64) *memoryRelease {
	return &memoryRelease{
		keep: max(releaseAfter, floor),
		samples: []metrics.Sample{
			{Name: "/memory/classes/heap/free:bytes"},
			{Name: "/memory/classes/heap/objects:bytes"},
		},
		release: debug.FreeOSMemory,
	}
}

// due reports whether free bytes of free heap memory beside objects bytes
// of heap objects are worth returning.
func (m *memoryRelease) due(free, objects uint64) bool {
	return free > m.keep && free > objects/2
}

// check reads the heap's figures and releases its free memory when due.
func (m *memoryRelease) check() bool {
	metrics.Read(m.samples)
	if !m.due(m.samples[0].Value.Uint64(), m.samples[1].Value.Uint64()) {
		return false
	}
	m.release()
	return true
}

// Run checks every interval until ctx is done.
func (m *memoryRelease) Run(ctx context.Context, interval time.Duration) {
	quota.Every(ctx, clockwork.NewRealClock(), interval, func() { m.check() })
}

// heapFloor keeps the collector's heap goal at least floor bytes while the
// live heap is small. Go's goal is the live heap times 1+GOGC/100, 4 MB at
// least, so a gateway whose live heap is 1 MB collects every 3 MB it
// allocates, a few hundred requests: each cycle scans every goroutine's
// stack and the roots whatever the heap holds, and under load that made
// collection 8 µs of the 74 µs of CPU a request took (issue 17's profile,
// against 2.5 µs in the bare proxy). After
// every collection heapFloor raises GOGC to what puts the next goal at
// floor, never lowering it below the process's own setting (GOGC, 100 by
// default): a large live heap (100,000 tracked tokens) is collected as Go
// would, and the memory a small heap may take grows by at most floor.
type heapFloor struct {
	floor   uint64
	samples []metrics.Sample
	set     func(int) int // debug.SetGCPercent; a test's stand-in
	base    int           // the process's own GOGC; <= 0 (off, or 0): left alone
	cur     int           // the GOGC last set
}

// newHeapFloor returns a heapFloor of floor bytes; Run does the work.
func newHeapFloor(floor uint64) *heapFloor {
	return &heapFloor{
		floor: floor,
		samples: []metrics.Sample{
			{Name: "/gc/heap/live:bytes"},
			{Name: "/gc/gogc:percent"},
			{Name: "/gc/scan/stack:bytes"},
			{Name: "/gc/scan/globals:bytes"},
		},
		set: debug.SetGCPercent,
	}
}

// percent is the GOGC that puts the next goal at the floor, or base when
// that is higher, by Go's own pacing: the goal is the live heap plus what
// the collector scans (the live heap, stacks and globals) times GOGC/100,
// and never under the 4 MB minimum times GOGC/100, so GOGC stays at most
// what puts that minimum at the floor. A live heap of 0 (no collection
// yet: nothing measured) leaves base, as a goal computed from it would let
// the heap grow without bound.
func (f *heapFloor) percent(live, stacks, globals uint64) int {
	if f.base <= 0 || live == 0 || live >= f.floor {
		return f.base
	}
	p := min((f.floor-live)*100/(live+stacks+globals), f.floor*100/goMinHeap)
	return int(max(p, uint64(f.base)))
}

// goMinHeap is the runtime's smallest heap goal at GOGC=100.
const goMinHeap = 4 << 20

// adjust sets GOGC for the live heap the last collection found. It
// leaves it alone when it would change by less than a tenth, except to go
// back to the process's own setting.
func (f *heapFloor) adjust() {
	metrics.Read(f.samples)
	p := f.percent(f.samples[0].Value.Uint64(), f.samples[2].Value.Uint64(), f.samples[3].Value.Uint64())
	if d := p - f.cur; d == 0 || (p != f.base && d < f.cur/10 && -d < f.cur/10) {
		return
	}
	f.cur = p
	f.set(p)
}

// Run adjusts GOGC after every collection until ctx is done, then gives
// the process its own setting back.
func (f *heapFloor) Run(ctx context.Context) {
	metrics.Read(f.samples)
	f.base = int(f.samples[1].Value.Uint64()) // GOGC=off reads as -1
	f.cur = f.base
	if f.base < 0 {
		return
	}
	defer f.set(f.base)
	gc := make(chan struct{}, 1)
	arm := func() {
		// A sentinel collected by the next cycle: its cleanup tells Run
		// a collection has ended. 32 bytes, not a tiny allocation (those
		// share a block, and its cleanup could wait for its neighbours).
		runtime.AddCleanup(new([32]byte), func(ch chan struct{}) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}, gc)
	}
	arm()
	f.adjust()
	for {
		select {
		case <-ctx.Done():
			return
		case <-gc:
			arm()
			f.adjust()
		}
	}
}
