package app

import (
	"net/http"
	"net/http/httptest"
	"testing"

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
