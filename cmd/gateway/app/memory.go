package app

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// releaseAfter is how much freed heap memory the gateway keeps from the
// OS at most, beyond half of what its live objects take.
const releaseAfter = 8 << 20

// memoryRelease returns the heap memory a burst left behind to the OS.
// Go's background scavenger keeps free memory up to about the heap goal
// (twice the live heap), so after 10,000 slow clients are gone the
// process would hold tens of MB it no longer needs, for good. When the
// heap's free memory (not yet returned) exceeds both releaseAfter and half
// of its objects, a full collection returns all of it
// (debug.FreeOSMemory): after a burst that is once, and under steady load
// at most once per check, a collection among the many the load causes.
type memoryRelease struct {
	samples []metrics.Sample
	release func() // debug.FreeOSMemory; a test's stand-in
}

func newMemoryRelease() *memoryRelease {
	return &memoryRelease{
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
	return free > releaseAfter && free > objects/2
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
