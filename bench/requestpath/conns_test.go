package requestpath

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/bench/bareproxy"
	"github.com/fusioo-gateway/gateway/bench/harness"
)

// The handler goroutine of a request served over a connection (net/http's
// conn.serve) keeps the largest stack the request ever needed while it
// waits, queued or forwarded: the runtime grows a stack by doubling and
// halves a parked one only when it uses under a quarter of it, which a
// request parked below the proxy never does. So how deep the request path
// goes, down to the quota store, is memory per request in flight:
// 8 KB, or 16 KB once anything on the way passes 8 KB.

// connsHeld opens n client connections to a server of h, each sending one
// read of one token (distinct, so none is coalesced), waits until held()
// reports n requests in h (or the server's upstream), and returns the
// goroutine stacks and live heap the n requests added, per request. The
// clients are raw connections: they add a socket each, no goroutine.
func connsHeld(tb testing.TB, h http.Handler, n int, held func() int) (stack, heap float64) {
	srv := httptest.NewUnstartedServer(h)
	if b, ok := h.(interface {
		BaseContext(net.Listener) context.Context
	}); ok {
		srv.Config.BaseContext = b.BaseContext
	}
	srv.Start()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
		srv.Close()
	}()
	heap0, stack0 := liveHeap(), stackInuse()
	for i := range n {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			tb.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "GET /v3/apps?seq=%d HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer queued-token\r\n\r\n", i); err != nil {
			tb.Fatal(err)
		}
	}
	if err := waitHeld(held, n, 60*time.Second); err != nil {
		tb.Fatal(err)
	}
	heap1, stack1 := liveHeap(), stackInuse()
	return float64(int64(stack1)-int64(stack0)) / float64(n), float64(int64(heap1)-int64(heap0)) / float64(n)
}

// holding is a handler that holds every request until the client leaves:
// what a connection with a request in it costs net/http alone.
func holding() (http.Handler, func() int) {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		<-r.Context().Done()
	}), func() int { return int(n.Load()) }
}

// holdingDeep is holding, but each request first makes a call deep enough
// to grow its stack past 4 KB (here about 6 KB; the gateway's way to the
// quota store is near 8 KB) and returns before it waits, at the very top
// of the handler: what a gateway would pay whose queued requests waited at
// the top of ServeHTTP, the admission decided below and returned. The
// runtime halves a parked goroutine's stack only when the part in use and
// 800 bytes more are under a quarter of it; over a connection, net/http's
// frames and the wait's already pass 2 KB less those 800 bytes, so this
// still holds 8 KB (in process, where a goroutine starts shallow, the same
// stack shrinks to 4 KB). How deep the call went does not matter (growStack
// of 1 to 15 holds the same) unless it passes 16 KB.
func holdingDeep() (http.Handler, func() int) {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack(5)
		n.Add(1)
		<-r.Context().Done()
	}), func() int { return int(n.Load()) }
}

// growStack uses about n+1 KB of stack (a frame of 1 KB a call).
//
//go:noinline
func growStack(n int) byte {
	var pad [1000]byte
	pad[n] = byte(n)
	if n == 0 {
		return pad[0]
	}
	return growStack(n-1) + pad[n]
}

// queuedGateway is a gateway (memory store, deployed defaults otherwise)
// whose token has used its quota of n, so that its next n requests queue
// for slots freeing within their wait.
func queuedGateway(tb testing.TB, n int) (http.Handler, func() int) {
	g := gatewayConfig(tb, "memory", upstream(tb).URL, "", "warn",
		"FUSIOO_GATEWAY_QUOTA_LIMIT="+strconv.Itoa(n), "FUSIOO_GATEWAY_QUOTA_WINDOW=20s",
		"FUSIOO_GATEWAY_QUEUE_MAX_WAIT=60s", "FUSIOO_GATEWAY_QUEUE_MAX_DEPTH="+strconv.Itoa(2*n),
		"FUSIOO_GATEWAY_QUEUE_MAX_QUEUED="+strconv.Itoa(2*n),
		"FUSIOO_GATEWAY_SMOOTHING_RATE=1000000000", "FUSIOO_GATEWAY_SMOOTHING_BURST=1000000000")
	base := baseContext(g.Handler)
	for i := range n {
		req := httptest.NewRequestWithContext(base, http.MethodGet, "/v3/apps?used="+strconv.Itoa(i), nil)
		req.Header.Set("Authorization", "Bearer queued-token")
		serveOne(tb, g.Handler, req, &discardWriter{h: http.Header{}})
	}
	return g.Handler, func() int {
		d, err := queueDepth(g)
		if err != nil {
			tb.Fatal(err)
		}
		return d
	}
}

// stalledUpstream holds every request until the client (the proxy) leaves.
func stalledUpstream(tb testing.TB) (*url.URL, func() int) {
	h, held := holding()
	up := httptest.NewServer(h)
	tb.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	return u, held
}

// TestStackStaysSmall holds the request path to an 8 KB handler stack,
// queued and forwarded: against the same requests held by net/http alone
// (queued) and by the bare proxy (forwarded to a stalled upstream), the
// gateway adds under 10 KB of stack per queued request (memory store) and
// 4 KB per forwarded one (memory store; Redis store without leases, every
// request calling Redis). A path passing 8 KB anywhere (a new frame on the
// way to the store, a larger one) doubles the handler's stack to 16 KB and
// fails this: before stop 26 trimmed the frames on the way to the store, a
// queued request added 12.3 KB and a forwarded one on Redis 6.9 KB
// (forwarded ones on the memory store were just within 8 KB); after, at
// most 4.3 KB and 2.3 KB (under stress on both cores too).
//
// Each case runs in a process of its own: goroutines of an earlier case
// still ending, and the stacks they leave to the runtime's pools, would
// blur what the next one measures.
//
// It measures the stacks the gateway's code needs, so it runs without the
// race detector, whose instrumentation makes every frame larger (a held
// request's stack 12.5 KB instead of 6.2): scripts/test.sh runs it so.
func TestStackStaysSmall(t *testing.T) {
	if raceEnabled {
		t.Skip("stack sizes under the race detector are not the gateway's: run without -race (scripts/test.sh does)")
	}
	if c := os.Getenv("STACK_CASE"); c != "" {
		fmt.Printf("stack-per-request %.0f\n", stackCase(t, c))
		return
	}
	measure := func(c string) float64 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestStackStaysSmall$", "-test.count", "1")
		cmd.Env = append(os.Environ(), "STACK_CASE="+c)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("case %s: %v\n%s", c, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "stack-per-request "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		t.Fatalf("case %s printed no figure:\n%s", c, out)
		return 0
	}
	held, queued := measure("held"), measure("queued")
	t.Logf("stack per queued request: %.0f B; per request net/http holds: %.0f B", queued, held)
	if queued-held >= 10<<10 {
		t.Errorf("a queued request adds %.0f B of stack over a held one (%.0f against %.0f): the handler's stack grew past 8 KB", queued-held, queued, held)
	}
	bare := measure("bare")
	for _, c := range []string{"forwarded", "forwarded-redis"} {
		f := measure(c)
		t.Logf("stack per request %s: %.0f B; bare proxy %.0f B", c, f, bare)
		if f-bare >= 4<<10 {
			t.Errorf("a request %s costs the gateway %.0f B of stack more than the bare proxy (%.0f against %.0f): the handler's stack grew past 8 KB", c, f-bare, f, bare)
		}
	}
}

// stackCase measures one case of TestStackStaysSmall: the stack per
// request of 200 requests held in it.
func stackCase(t *testing.T, c string) float64 {
	const n = 200
	var h http.Handler
	var held func() int
	switch c {
	case "held":
		h, held = holding()
	case "queued":
		h, held = queuedGateway(t, n)
	case "bare":
		u, upHeld := stalledUpstream(t)
		bare, tr := bareproxy.New(u)
		t.Cleanup(tr.CloseIdleConnections)
		h, held = bare, upHeld
	case "forwarded":
		u, upHeld := stalledUpstream(t)
		h, held = gatewayConfig(t, "memory", u.String(), "", "warn", "FUSIOO_GATEWAY_UPSTREAM_TIMEOUT=120s").Handler, upHeld
	case "forwarded-redis":
		rs, err := harness.StartRedis(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rs.Stop)
		u, upHeld := stalledUpstream(t)
		h, held = gatewayConfig(t, "redis", u.String(), rs.URL(), "warn",
			"FUSIOO_GATEWAY_UPSTREAM_TIMEOUT=120s", "FUSIOO_GATEWAY_REDIS_LEASE_TIME=0s").Handler, upHeld
	default:
		t.Fatalf("no case %q", c)
	}
	stack, _ := connsHeld(t, h, n, held)
	return stack
}

// BenchmarkQueuedConns is BenchmarkQueued over real client connections:
// b.N requests of one token queued in a gateway served by net/http, against
// b.N requests a bare handler holds (what a connection with a request in it
// costs net/http alone: its buffers, its goroutines), and against b.N a
// bare handler holds at its top after a call that needed 8 KB of stack
// (holdingDeep). It reports each's
// stack and live heap per request and in all; the gateway's own cost of a
// queued request is the difference.
//
//	go test -run '^$' -bench QueuedConns -benchtime 5000x ./bench/requestpath
//
// (10,000 would need 20,000 descriptors in this one process.)
func BenchmarkQueuedConns(b *testing.B) {
	run := func(b *testing.B, h http.Handler, held func() int) {
		stack, heap := connsHeld(b, h, b.N, held)
		b.ReportMetric(stack, "stack-B/req")
		b.ReportMetric(heap, "heap-B/req")
		b.ReportMetric((stack+heap)*float64(b.N)/1e6, "MB-total")
	}
	b.Run("held", func(b *testing.B) {
		h, held := holding()
		run(b, h, held)
	})
	b.Run("held-after-deep", func(b *testing.B) {
		h, held := holdingDeep()
		run(b, h, held)
	})
	b.Run("gateway", func(b *testing.B) {
		h, held := queuedGateway(b, b.N)
		run(b, h, held)
	})
}
