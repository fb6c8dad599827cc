package app

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fusioo-gateway/gateway/internal/config"
)

// TestAdminPprofOnlyWhenEnabled: the profiles are served on the admin
// listener when server.pprof is set, and not at all otherwise.
func TestAdminPprofOnlyWhenEnabled(t *testing.T) {
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
