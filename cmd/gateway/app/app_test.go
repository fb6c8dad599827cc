package app

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fusioo-gateway/gateway/internal/config"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// TestAdminPprofOnlyWhenEnabled: the profiles are served on the admin
// listener when server.pprof is set, and not at all otherwise.
func TestAdminPprofOnlyWhenEnabled(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{false, true} {
		cfg := config.Default()
		cfg.Server.Pprof = on
		g, err := New(cfg, zap.NewNop(), "test")
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		g.Admin().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/goroutine?debug=1", nil))
		if got := rec.Code == http.StatusOK; got != on {
			t.Errorf("pprof=%v: /debug/pprof/goroutine answered %d", on, rec.Code)
		}
		g.Close()
	}
}

// TestLeaseTimeCappedByWindow: redis.lease_time applies up to 1/300 of
// the quota window, so short test windows get short leases.
func TestLeaseTimeCappedByWindow(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ lease, window, want time.Duration }{
		{time.Second, time.Hour, time.Second},
		{time.Second, 30 * time.Second, 100 * time.Millisecond},
		{0, time.Hour, 0},
	} {
		cfg := config.Default()
		cfg.Redis.LeaseTime.Duration, cfg.Quota.Window.Duration = c.lease, c.window
		if got := leaseTime(cfg); got != c.want {
			t.Errorf("lease_time %s, window %s: %s, want %s", c.lease, c.window, got, c.want)
		}
	}
}

// TestUpstreamSpeaksHTTP1: the upstream is spoken to in HTTP/1.1 even
// when it offers HTTP/2, whose Go client re-sends bodiless requests of
// any method on its own after a stream reset (found by review).
func TestUpstreamSpeaksHTTP1(t *testing.T) {
	t.Parallel()
	var proto atomic.Value
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { proto.Store(r.Proto) }))
	up.EnableHTTP2 = true
	up.StartTLS()
	defer up.Close()
	tr := upstreamTransport(config.Default().Upstream)
	pool := x509.NewCertPool()
	pool.AddCert(up.Certificate())
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("POST", up.URL+"/v3/webhooks", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if p, _ := proto.Load().(string); p != "HTTP/1.1" {
		t.Fatalf("upstream spoken to in %q", p)
	}
}

// TestConfiguredZerosPassedThrough: the file's zeros reach the packages as
// zeros, which mean there what config.example.toml says they mean (no
// retry budget share, no replay buffering, no serialization, no queue, no
// anonymous limit, no leases); what the file has no key for comes from the
// packages' Default functions.
func TestConfiguredZerosPassedThrough(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
[retry]
budget_ratio = 0.0
max_body_bytes = 0
max_buffer_bytes = 0
serialize_cooldown = "0s"
[smoothing]
anonymous_rate = 0.0
anonymous_burst = 0
[queue]
max_wait = "0s"
max_depth = 0
max_queued = 0
[quota]
store = "redis"
[redis]
url = "redis://127.0.0.1:1"
lease_time = "0s"
lease_max = 0
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	rc, def := retryConfig(cfg, routes, nil), retry.DefaultConfig()
	if rc.BudgetRatio != 0 || rc.MaxBodyBytes != 0 || rc.MaxBufferBytes != 0 || rc.SerializeCooldown != 0 ||
		rc.ConcurrentDelay != def.ConcurrentDelay || rc.BudgetMinRetries != def.BudgetMinRetries || rc.BudgetWindow != def.BudgetWindow ||
		rc.MaxAttempts != 5 || rc.MaxRetryAfter != time.Hour {
		t.Errorf("retry config %+v", rc)
	}
	lc := limiterConfig(cfg, nil, nil)
	if lc.AnonymousRate != 0 || lc.AnonymousBurst != 0 || lc.MaxWait != 0 || lc.MaxDepth != 0 || lc.MaxQueued != 0 ||
		lc.Lease != 0 || lc.LeaseMax != 0 || lc.IdleAfter != limiter.DefaultConfig().IdleAfter || lc.Rate != 10 || lc.Burst != 20 {
		t.Errorf("limiter config %+v", lc)
	}
	tr := upstreamTransport(cfg.Upstream)
	if tr.ResponseHeaderTimeout != time.Minute || tr.TLSHandshakeTimeout != 5*time.Second || tr.IdleConnTimeout != 90*time.Second || tr.MaxIdleConnsPerHost != 256 {
		t.Errorf("upstream transport: headers %s, handshake %s, idle %s, idle conns %d",
			tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout, tr.IdleConnTimeout, tr.MaxIdleConnsPerHost)
	}
}

// TestCacheRoutesAreReads: a [[cache]] entry must name a read route of the
// table (version prefix or not); every one that does not is named.
func TestCacheRoutesAreReads(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.Cache = []config.Cache{
		{Route: "GET /v3/records/apps/{app}", TTL: config.Duration{Duration: time.Second}, MaxBytes: 1 << 20},
		{Route: "PUT /records/{record}", TTL: config.Duration{Duration: time.Second}, MaxBytes: 1 << 20},
		{Route: "GET /nowhere", TTL: config.Duration{Duration: time.Second}, MaxBytes: 1 << 20},
	}
	_, err := New(cfg, zap.NewNop(), "test")
	if err == nil || strings.Contains(err.Error(), "cache[0]") || !strings.Contains(err.Error(), "cache[1].route") || !strings.Contains(err.Error(), "cache[2].route") {
		t.Fatalf("%v", err)
	}
	cfg.Cache = cfg.Cache[:1]
	if g, err := New(cfg, zap.NewNop(), "test"); err != nil {
		t.Fatal(err)
	} else {
		g.Close()
	}
}
