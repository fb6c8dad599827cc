package fusioosim

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

func TestPingNotCharged(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Limit: 1})
	for range 5 {
		expect(t, h.get("/v3/ping"), 200, 10000)
	}
	expect(t, h.get("/v3/apps"), 200, 10000)
	expect(t, h.get("/v3/apps"), 429, 20005)
	expect(t, h.get("/v3/ping"), 200, 10000)
	l := h.sim.Ledger()
	if l.Requests != 8 || l.Charged != 1 || l.OverQuota != 1 || l.ByRoute["GET /ping"] != 6 || l.ByRoute["GET /apps"] != 2 {
		t.Fatalf("ledger %+v", l)
	}
}

// step is one request of a quota scenario: advance the clock, send, expect.
type step struct {
	advance    time.Duration
	token      string
	status     int
	code       fusioo.Code
	retryAfter string // expected Retry-After header ("" = none)
}

func runSteps(t *testing.T, h *harness, c *clock, steps []step) {
	t.Helper()
	for i, s := range steps {
		c.Advance(s.advance)
		token := s.token
		if token == "" {
			token = tok
		}
		a := h.do(req{method: "GET", path: "/v3/records/apps/app1/count", token: token})
		if a.status != s.status || a.env.Code != s.code || a.header.Get("Retry-After") != s.retryAfter {
			t.Fatalf("step %d (at +%v): got %d/%d Retry-After %q, want %d/%d %q",
				i, c.Now().Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), a.status, a.env.Code, a.header.Get("Retry-After"), s.status, s.code, s.retryAfter)
		}
	}
}

var (
	okStep   = step{status: 200, code: 10000}
	overStep = step{status: 429, code: 20005}
)

func at(d time.Duration, s step) step { s.advance = d; return s }

func over(retryAfter string) step { s := overStep; s.retryAfter = retryAfter; return s }

func TestRollingWindow(t *testing.T) {
	t.Parallel()
	c := newClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	h := newHarness(t, Config{Limit: 3, Window: time.Hour, Now: c.Now, RetryAfter: true})
	runSteps(t, h, c, []step{
		okStep, okStep, // 0:00 ×2
		at(30*time.Minute, okStep),                    // 0:30
		at(10*time.Minute, over("1200")),              // 0:40: the 0:00 requests free at 1:00
		at(20*time.Minute-time.Nanosecond, over("1")), // just before 1:00
		at(time.Nanosecond, okStep),                   // 1:00: the 0:00 requests left the window
		okStep, over("1800"),                          // 1:00: the 0:30 one frees at 1:30
		at(30*time.Minute, okStep), // 1:30
		over("1800"),
	})
	l := h.sim.Ledger()
	if l.Charged != 6 || l.OverQuota != 4 || l.MaxInWindow != 3 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestFixedWindow(t *testing.T) {
	t.Parallel()
	c := newClock(time.Date(2026, 1, 1, 0, 50, 0, 0, time.UTC))
	h := newHarness(t, Config{Limit: 3, Window: time.Hour, Fixed: true, Now: c.Now, RetryAfter: true})
	runSteps(t, h, c, []step{
		okStep, okStep, okStep, // 0:50
		over("600"),                                // until 1:00
		at(10*time.Minute, okStep), okStep, okStep, // 1:00, a new window
		over("3600"),
		at(59*time.Minute, over("60")),
		at(time.Minute, okStep),
	})
	l := h.sim.Ledger()
	// Six requests within ten minutes: twice the limit in one rolling hour.
	if l.Charged != 7 || l.OverQuota != 3 || l.MaxInWindow != 6 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestNoRetryAfterByDefault(t *testing.T) {
	t.Parallel()
	c := newClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	h := newHarness(t, Config{Limit: 1, Now: c.Now})
	runSteps(t, h, c, []step{okStep, overStep, at(time.Hour-1, overStep), at(1, okStep)})
}

func TestUnlimited(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	for range 50 {
		expect(t, h.get("/v3/apps"), 200, 10000)
	}
	if l := h.sim.Ledger(); l.Charged != 50 || l.OverQuota != 0 || l.MaxInWindow != 50 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestScope(t *testing.T) {
	t.Parallel()
	c := newClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	user := func(token string) string { u, _, _ := strings.Cut(token, ":"); return u }
	h := newHarness(t, Config{Limit: 2, Now: c.Now, Scope: user})
	runSteps(t, h, c, []step{
		{token: "alice:t1", status: 200, code: 10000},
		{token: "alice:t2", status: 200, code: 10000},
		{token: "alice:t1", status: 429, code: 20005},
		{token: "alice:t3", status: 429, code: 20005},
		{token: "bob:t1", status: 200, code: 10000},
	})
	l := h.sim.Ledger()
	if len(l.PerScope) != 2 {
		t.Fatalf("per scope %v", l.PerScope)
	}
	for k, n := range l.PerScope {
		if len(k) != 12 || strings.Contains(k, "alice") || strings.Contains(k, "bob") || (n != 2 && n != 1) {
			t.Fatalf("per scope %v", l.PerScope)
		}
	}

	// Without Scope, each token is its own scope.
	h = newHarness(t, Config{Limit: 1, Now: c.Now})
	runSteps(t, h, c, []step{
		{token: "alice:t1", status: 200, code: 10000},
		{token: "alice:t2", status: 200, code: 10000},
		{token: "alice:t1", status: 429, code: 20005},
	})
	if l := h.sim.Ledger(); len(l.PerScope) != 2 {
		t.Fatalf("per scope %v", l.PerScope)
	}
}

// TestQuotaConcurrent sends many requests at once: exactly Limit are
// admitted, whatever the interleaving.
func TestQuotaConcurrent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Limit: 100})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[fusioo.Code]int{}
	for range 20 {
		wg.Go(func() {
			for range 15 {
				a, err := h.try(req{method: "GET", path: "/v3/records/apps/app1/count", token: tok})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				codes[a.env.Code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	l := h.sim.Ledger()
	if codes[10000] != 100 || codes[20005] != 200 || l.Charged != 100 || l.OverQuota != 200 || l.MaxInWindow != 100 {
		t.Fatalf("codes %v ledger %+v", codes, l)
	}
}
