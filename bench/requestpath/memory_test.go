package requestpath

import (
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/bench/harness"
)

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkTokens reports the live heap each token costs the whole
// gateway (memory store, deployed defaults): b.N distinct tokens send one
// request each, then the heap is measured after a collection.
//
//   - tracked: right after, every token's local state still held (the
//     smoothing burst is raised so none is spent before the measurement);
//   - idle: with the defaults, once every smoother has refilled and the
//     sweeps ran: what remains is the quota store's counts, kept for the
//     window.
//
// Issue 17's budget is 1 KB per tracked idle token.
//
//	go test -run '^$' -bench Tokens -benchtime 100000x ./bench/requestpath
func BenchmarkTokens(b *testing.B) {
	b.Run("tracked", func(b *testing.B) {
		g := gatewayConfig(b, "memory", upstream(b).URL, "", "warn", "FUSIOO_GATEWAY_QUOTA_MAX_KEYS=2000000", "FUSIOO_GATEWAY_SMOOTHING_BURST=1000000000")
		benchTokens(b, g.Handler, nil)
	})
	b.Run("idle", func(b *testing.B) {
		g := gatewayConfig(b, "memory", upstream(b).URL, "", "warn", "FUSIOO_GATEWAY_QUOTA_MAX_KEYS=2000000")
		benchTokens(b, g.Handler, func() {
			// The default smoother (10/s, burst 20) refills in 2 s.
			time.Sleep(2500 * time.Millisecond)
			g.Sweep()
		})
	})
}

func benchTokens(b *testing.B, h http.Handler, settle func()) {
	ctx := baseContext(h)
	w := &discardWriter{h: http.Header{}}
	// One token first, so what is measured is per token, not the first
	// request's one-time set-up.
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/apps", nil)
	req.Header.Set("Authorization", "Bearer warm-up")
	serveOne(b, h, req, w)
	before := liveHeap()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/apps", nil)
		req.Header.Set("Authorization", "Bearer "+harness.Token(i))
		serveOne(b, h, req, w)
	}
	b.StopTimer()
	if settle != nil {
		settle()
	}
	after := liveHeap()
	b.ReportMetric(float64(int64(after)-int64(before))/float64(b.N), "heap-B/token")
	if f := os.Getenv("HEAPPROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(out)
		out.Close()
	}
}
