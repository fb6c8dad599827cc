package requestpath

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/bench/harness"
	"github.com/fusioo-gateway/gateway/bench/inproc"
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
	writeHeapProfile(b)
}

// writeHeapProfile saves a heap profile to $HEAPPROFILE, when set: what
// the measured heap holds.
func writeHeapProfile(b *testing.B) {
	f := os.Getenv("HEAPPROFILE")
	if f == "" {
		return
	}
	out, err := os.Create(f)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if err := pprof.WriteHeapProfile(out); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkQueued reports what a request waiting in the queue costs the
// whole gateway (memory store): the quota of one token is used up, then
// b.N requests of that token queue for slots that free within their wait;
// with all of them waiting, the live heap and the goroutine stacks are
// measured (the request's own goroutine is its only one), then every
// client leaves. Issue 17's budget is 10,000 queued requests under 50 MB.
//
//	go test -run '^$' -bench Queued -benchtime 10000x ./bench/requestpath
func BenchmarkQueued(b *testing.B) {
	n := b.N
	h, queued := queuedGateway(b, n) // the quota, used up
	base := baseContext(h)
	var seq atomic.Int64
	send := func(ctx context.Context) {
		// Distinct reads (a sequence number in the query): identical ones
		// would wait as one, coalesced.
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/apps?seq="+strconv.FormatInt(seq.Add(1), 10), nil)
		req.Header.Set("Authorization", "Bearer queued-token")
		h.ServeHTTP(&discardWriter{h: http.Header{}}, req)
	}
	before, stacks0 := liveHeap(), stackInuse()
	ctx, cancel := context.WithCancel(base)
	var wg sync.WaitGroup
	b.ResetTimer()
	for range n {
		wg.Go(func() { send(ctx) })
	}
	if err := waitHeld(queued, n, 30*time.Second); err != nil {
		cancel()
		wg.Wait()
		b.Fatal(err)
	}
	b.StopTimer()
	heap, stacks := liveHeap(), stackInuse()
	writeHeapProfile(b)
	cancel()
	wg.Wait()
	b.ReportMetric(float64(int64(heap)-int64(before))/float64(n), "heap-B/queued")
	b.ReportMetric(float64(int64(stacks)-int64(stacks0))/float64(n), "stack-B/queued")
	b.ReportMetric(float64(int64(heap+stacks)-int64(before+stacks0))/1e6, "MB-total")
}

func stackInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// waitHeld polls held (a queue depth gauge, a count of requests in a
// handler) until n requests are held, for at most d.
func waitHeld(held func() int, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		k := held()
		if k >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d requests held after %s", k, n, d)
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by d
	}
}

func queueDepth(g *inproc.Gateway) (int, error) {
	mfs, err := g.Registry.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "fusioo_gateway_queue_depth" && len(mf.GetMetric()) > 0 {
			return int(mf.GetMetric()[0].GetGauge().GetValue()), nil
		}
	}
	return 0, fmt.Errorf("no fusioo_gateway_queue_depth gauge")
}
