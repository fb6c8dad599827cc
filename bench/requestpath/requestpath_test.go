// Package requestpath benchmarks the gateway's whole request path in
// process (identify, admit through the limiter and quota store, forward
// through the attempt loop, classify, count, log) against a bare
// httputil.ReverseProxy to the same upstream:
//
//	go test -run '^$' -bench RequestPath -benchmem ./bench/requestpath
//	go test -run '^$' -bench 'RequestPath/gateway-redis' -cpuprofile cpu.out ./bench/requestpath
//
// The handler is called directly (no client connection in front of it);
// the upstream is a real loopback HTTP server answering a fixed 2 KB
// Fusioo envelope, so each op includes one upstream round trip. The
// upstream's own allocations are in every target's figures alike.
package requestpath

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fusioo-gateway/gateway/bench/bareproxy"
	"github.com/fusioo-gateway/gateway/bench/harness"
	"github.com/fusioo-gateway/gateway/bench/inproc"
)

// upstreamBody is a success envelope the size of a 20-record page.
var upstreamBody = func() []byte {
	var b strings.Builder
	b.WriteString(`{"code":10000,"message":"Success","data":[`)
	for i := range 20 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"rec%d","name":"record %d","status":"open","notes":"%s"}`, i, i, strings.Repeat("n", 40))
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}()

func upstream(tb testing.TB) *httptest.Server {
	clen := strconv.Itoa(len(upstreamBody))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{clen}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(upstreamBody)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// baseContext is the context a server gives h's requests: the gateway's
// handler's own base context, as cmd/gateway wires it (BaseContext).
func baseContext(h http.Handler) context.Context {
	if b, ok := h.(interface {
		BaseContext(net.Listener) context.Context
	}); ok {
		return b.BaseContext(nil)
	}
	return context.Background()
}

// target is one handler under test.
type target struct {
	name string
	h    http.Handler
}

func gatewayConfig(tb testing.TB, store, upstreamURL, redisURL, logLevel string, extraEnv ...string) *inproc.Gateway {
	env := append([]string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + upstreamURL}, extraEnv...)
	if redisURL != "" {
		env = append(env, "FUSIOO_GATEWAY_REDIS_URL="+redisURL)
	}
	cfg, err := inproc.Parse(harness.BenchGatewayConfig(store, logLevel), env)
	if err != nil {
		tb.Fatal(err)
	}
	g, err := inproc.New(cfg, io.Discard)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(g.Close)
	return g
}

// discardWriter is a minimal http.ResponseWriter: the same for every
// target, allocation-free after its header map.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

func serveOne(tb testing.TB, h http.Handler, req *http.Request, w *discardWriter) {
	clear(w.h)
	w.status = 0
	h.ServeHTTP(w, req)
	if w.status != http.StatusOK {
		tb.Fatalf("status %d", w.status)
	}
}

func tokens(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "Bearer " + harness.Token(i)
	}
	return out
}

func runTargets(b *testing.B, targets []target) {
	auth := tokens(16)
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			var next atomic.Int64
			b.ReportAllocs()
			// 16 requests in flight per CPU: enough to keep the CPUs
			// busy, so ns/op measures CPU cost, not one round trip's wait.
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: http.Header{}}
				ctx := baseContext(tg.h)
				for pb.Next() {
					// A sequence number in the query: no two reads are the
					// same, so none is coalesced (each pays what
					// coalescing costs a read).
					n := next.Add(1)
					req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v3/records/apps/app1?limit=20&seq="+strconv.FormatInt(n, 10), nil)
					req.Header.Set("Authorization", auth[int(n)%len(auth)])
					serveOne(b, tg.h, req, w)
				}
			})
		})
	}
}

// BenchmarkRequestPath compares, per request, the bare proxy with the
// gateway on the memory store and on the Redis store (a real redis-server
// on loopback; the benchmark fails if it cannot start one), all with the
// deployed defaults: metrics, retries, access log at info (formatted,
// written to io.Discard), Redis leases and autopipelining; then the Redis
// store without leases (one script per request, as with many tokens of
// low rate), with and without autopipelining.
func BenchmarkRequestPath(b *testing.B) {
	up := upstream(b)
	u, _ := url.Parse(up.URL)
	bare, tr := bareproxy.New(u)
	b.Cleanup(tr.CloseIdleConnections)
	rs, err := harness.StartRedis(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rs.Stop)
	runTargets(b, []target{
		{"bare", bare},
		{"gateway-memory", gatewayConfig(b, "memory", up.URL, "", "info").Handler},
		{"gateway-redis", gatewayConfig(b, "redis", up.URL, rs.URL(), "info").Handler},
		{"gateway-redis-no-leases", gatewayConfig(b, "redis", up.URL, rs.URL(), "info", "FUSIOO_GATEWAY_REDIS_LEASE_TIME=0s").Handler},
		{"gateway-redis-no-leases-no-autopipeline", gatewayConfig(b, "redis", up.URL, rs.URL(), "info",
			"FUSIOO_GATEWAY_REDIS_LEASE_TIME=0s", "FUSIOO_GATEWAY_REDIS_AUTO_PIPELINE=false").Handler},
		{"gateway-memory-nolog", gatewayConfig(b, "memory", up.URL, "", "warn").Handler},
		{"gateway-memory-nocoalesce", gatewayConfig(b, "memory", up.URL, "", "info", "FUSIOO_GATEWAY_COALESCE_ENABLED=false").Handler},
	})
}

// TestRequestPathSmoke runs each target once, so the benchmark's set-up
// is checked by every `go test ./...`.
func TestRequestPathSmoke(t *testing.T) {
	up := upstream(t)
	u, _ := url.Parse(up.URL)
	bare, tr := bareproxy.New(u)
	t.Cleanup(tr.CloseIdleConnections)
	rs, err := harness.StartRedis(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	for _, h := range []http.Handler{bare, gatewayConfig(t, "memory", up.URL, "", "info").Handler,
		gatewayConfig(t, "redis", up.URL, rs.URL(), "info").Handler} {
		w := &discardWriter{h: http.Header{}}
		for range 3 {
			req := httptest.NewRequestWithContext(baseContext(h), http.MethodGet, "/v3/records/apps/app1?limit=20", nil)
			req.Header.Set("Authorization", tokens(1)[0])
			serveOne(t, h, req, w)
		}
	}
}
