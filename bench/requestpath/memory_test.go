package requestpath

import (
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"

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

// BenchmarkIdleTokens reports the live heap each tracked idle token costs
// the whole gateway (memory store, deployed defaults): b.N distinct tokens
// send one request each, then the heap is measured after a collection.
// Issue 17's budget is 1 KB per token.
//
//	go test -run '^$' -bench IdleTokens -benchtime 100000x ./bench/requestpath
func BenchmarkIdleTokens(b *testing.B) {
	up := upstream(b)
	g := gatewayConfig(b, "memory", up.URL, "", "warn", "FUSIOO_GATEWAY_QUOTA_MAX_KEYS=2000000")
	ctx := baseContext(g.Handler)
	w := &discardWriter{h: http.Header{}}
	// One token first, so what is measured is per token, not the first
	// request's one-time set-up.
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/apps", nil)
	req.Header.Set("Authorization", "Bearer warm-up")
	serveOne(b, g.Handler, req, w)
	before := liveHeap()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/apps", nil)
		req.Header.Set("Authorization", "Bearer "+harness.Token(i))
		serveOne(b, g.Handler, req, w)
	}
	b.StopTimer()
	after := liveHeap()
	b.ReportMetric(float64(int64(after)-int64(before))/float64(b.N), "heap-B/token")
	if f := os.Getenv("HEAPPROFILE"); f != "" {
		out, _ := os.Create(f)
		_ = pprof.WriteHeapProfile(out)
		out.Close()
	}
	runtime.KeepAlive(g)
}
