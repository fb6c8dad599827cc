package retry

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// recordCallbacks implements Callbacks, recording what it hears.
type recordCallbacks struct {
	mu       sync.Mutex
	admitted int
	got      []Attempt
}

func (c *recordCallbacks) AdmitRetry(context.Context, time.Time) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.admitted++
	return true, nil
}

func (c *recordCallbacks) Answered(ctx context.Context, a Attempt) {
	if ctx == nil {
		panic("no context")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, a)
}

// TestCallbacks: Hooks.Callbacks stands in for Admit and Answered when
// they are nil, and the func fields win when set.
func TestCallbacks(t *testing.T) {
	up := newScript(t, scripted{status: http.StatusServiceUnavailable}, scripted{status: http.StatusOK})
	tr := newTransport(t, fastConfig(t))
	cb := &recordCallbacks{}
	r := roundTrip(t, tr, up.srv.URL, call{method: "GET", path: "/v3/apps", hooks: &Hooks{Key: "k", Callbacks: cb}})
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("%d %v", r.status, r.err)
	}
	if cb.admitted != 1 || len(cb.got) != 2 || cb.got[0].Status != 503 || cb.got[1].Status != 200 || !cb.got[1].Final {
		t.Fatalf("admitted %d, answered %+v", cb.admitted, cb.got)
	}

	up = newScript(t, scripted{status: http.StatusServiceUnavailable}, scripted{status: http.StatusOK})
	cb = &recordCallbacks{}
	hooks, got := recordHooks(func(context.Context, time.Time) (bool, error) { return false, nil })
	hooks.Callbacks = cb
	r = roundTrip(t, tr, up.srv.URL, call{method: "GET", path: "/v3/apps", hooks: hooks})
	if r.err != nil || r.status != http.StatusServiceUnavailable {
		t.Fatalf("%d %v", r.status, r.err)
	}
	if cb.admitted != 0 || len(cb.got) != 0 || len(got()) != 1 {
		t.Fatalf("callbacks heard %d admissions, %d answers; the funcs %d answers", cb.admitted, len(cb.got), len(got()))
	}
}

// TestHooksRoute: a Hooks.Route of the Transport's table is used instead
// of matching the path; one of another table is ignored.
func TestHooksRoute(t *testing.T) {
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
