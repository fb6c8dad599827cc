package retry

import (
	"net/http"
	"testing"
)

// TestStartRoute: a route of the Policy's table given to Start is used
// instead of matching the path; one of another table is ignored.
func TestStartRoute(t *testing.T) {
	t.Parallel()
	cfg := fastConfig(t)
	tr := newTransport(t, cfg)
	// A create route for what is, by its path, a read: a 504 is final.
	create := cfg.Routes.Match("POST", "/records/apps/app1")
	for _, c := range []struct {
		name     string
		hooks    *Hooks
		attempts int
	}{
		{"own table", &Hooks{Route: create}, 1},
		{"other table", &Hooks{Route: testRoutes(t).Match("POST", "/records/apps/app1")}, 2},
		{"none", &Hooks{}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := newScript(t, scripted{status: http.StatusGatewayTimeout}, scripted{status: http.StatusOK})
			roundTrip(t, tr, up.srv.URL, call{method: "GET", path: "/v3/records/apps/app1", hooks: c.hooks})
			up.mu.Lock()
			n := len(up.bodies)
			up.mu.Unlock()
			if n != c.attempts {
				t.Fatalf("%d attempts, want %d", n, c.attempts)
			}
		})
	}
}
