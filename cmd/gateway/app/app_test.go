package app

import (
	"net/http"
	"net/http/httptest"
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
