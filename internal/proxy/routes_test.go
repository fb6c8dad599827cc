package proxy_test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/quota"
)

// TestUnchargedRoutesThroughExhaustedKey: 1,000 pings through a key whose
// quota is spent all reach the upstream, and none is charged there.
func TestUnchargedRoutesThroughExhaustedKey(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOpts{policy: quota.Policy{Limit: 3, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: time.Millisecond})
	for range 3 {
		s.do("GET", "/v3/apps", "tok-ping", nil)
	}
	if resp, _ := s.do("GET", "/v3/apps", "tok-ping", nil); resp.StatusCode != 429 {
		t.Fatalf("key not exhausted: %d", resp.StatusCode)
	}
	before := s.sim.Ledger()
	if resp, _ := s.do("GET", "/v3/ping", "tok-ping", nil); resp.Header.Get("RateLimit-Remaining") != "0" || resp.Header.Get("RateLimit-Limit") != "3" {
		t.Fatalf("ping through an exhausted key: quota headers %v", resp.Header)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < 1000; i += 8 {
				if resp, b := s.do("GET", "/v3/ping", "tok-ping", nil); resp.StatusCode != 200 {
					t.Errorf("ping %d: %d %s", i, resp.StatusCode, b)
					return
				}
			}
		})
	}
	wg.Wait()
	after := s.sim.Ledger()
	if after.Charged != before.Charged || after.ByRoute["GET /ping"] != 1001 {
		t.Fatalf("charged %d -> %d, pings seen %d", before.Charged, after.Charged, after.ByRoute["GET /ping"])
	}
}

// TestBoundedRouteLabels: 10,000 distinct record ids leave the route label
// with exactly one value per route of the table.
func TestBoundedRouteLabels(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOpts{policy: quota.Policy{Limit: 100000, Window: time.Hour, Buckets: quota.DefaultBuckets}})
	_, series := s.metric("fusioo_gateway_route_requests_total")
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < 10000; i += 8 {
				path := fmt.Sprintf("/v3/records/rec%06d", i)
				if i%3 == 0 {
					path = fmt.Sprintf("/v3/records/apps/app%d/count", i)
				}
				s.do("GET", path, "tok-labels", nil)
			}
		})
	}
	wg.Wait()
	total, after := s.metric("fusioo_gateway_route_requests_total")
	if after != series || total != 10000 {
		t.Fatalf("route label values %d -> %d after %v requests", series, after, total)
	}
	if n, _ := s.metric("fusioo_gateway_route_requests_total", "route", "GET /records/{record}"); n != 6666 {
		t.Fatalf("GET /records/{record}: %v", n)
	}
}

// TestLearnFromUpstream20005: two tokens share one simulated quota, which
// the gateway cannot see. After the first upstream 20005 for a token the
// gateway sends nothing more upstream for it until the window frees, and
// counts the event.
func TestLearnFromUpstream20005(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := newStack(t, stackOpts{
		clock:    clk,
		policy:   quota.Policy{Limit: 100, Window: time.Hour, Buckets: quota.DefaultBuckets},
		maxWait:  time.Second,
		attempts: 3,
		sim:      &fusioosim.Config{Limit: 5, Window: time.Hour, Scope: func(string) string { return "one-user" }, Now: clk.Now},
	})
	for range 3 {
		s.do("GET", "/v3/apps", "tok-a", nil)
	}
	codes := []int{}
	for range 3 {
		resp, _ := s.do("GET", "/v3/apps", "tok-b", nil)
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Fatalf("token b: %v", codes)
	}
	if l := s.sim.Ledger(); l.OverQuota != 1 {
		t.Fatalf("over quota %d", l.OverQuota)
	}
	if n, _ := s.metric("fusioo_gateway_quota_upstream_exhausted_total"); n != 1 {
		t.Fatalf("quota_upstream_exhausted_total %v", n)
	}
	seen := s.sim.Ledger().Requests
	for range 10 {
		resp, b := s.do("GET", "/v3/apps", "tok-b", nil)
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 429 || ra < 3590 || ra > 3600 {
			t.Fatalf("blocked key: %d Retry-After %d %s", resp.StatusCode, ra, b)
		}
	}
	if l := s.sim.Ledger(); l.Requests != seen || l.OverQuota != 1 {
		t.Fatalf("the gateway kept sending: %d -> %d requests, %d over quota", seen, l.Requests, l.OverQuota)
	}
	clk.Advance(time.Hour)
	if resp, b := s.do("GET", "/v3/apps", "tok-b", nil); resp.StatusCode != 200 {
		t.Fatalf("after the window: %d %s", resp.StatusCode, b)
	}
}

// TestUpstreamRetryAfterPausesUpstream: a 503 with Retry-After pauses the
// whole upstream (maintenance is not a token's), not only the request that
// saw it; longer than the wait left, a client gets 503/10004 at once with
// the Retry-After, never 20005, and no quota is blocked.
func TestUpstreamRetryAfterPausesUpstream(t *testing.T) {
	t.Parallel()
	synctest.Test(t, upstreamRetryAfterPausesUpstream)
}

func upstreamRetryAfterPausesUpstream(t *testing.T) {
	s := newStack(t, stackOpts{
		maxWait:  time.Second,
		attempts: 3,
		sim:      &fusioosim.Config{Faults: fusioosim.Faults{Unavailable: 1, UnavailableRetryAfter: 2 * time.Second}},
		inBubble: true,
	})
	resp, _ := s.do("GET", "/v3/apps", "tok-pause", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("first: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if l := s.sim.Ledger(); l.Injected["503"] != 1 {
		t.Fatalf("retried although Retry-After exceeds max_wait: %+v", l.Injected)
	}
	s.sim.SetFaults(fusioosim.Faults{})
	for _, tok := range []string{"tok-pause", "tok-other"} {
		resp, b := s.do("GET", "/v3/apps", tok, nil)
		if ra := resp.Header.Get("Retry-After"); resp.StatusCode != 503 || fusioo.ParseCode(b) != fusioo.CodeUnavailable || ra != "2" {
			t.Fatalf("%s while the upstream is paused: %d Retry-After %q %s", tok, resp.StatusCode, ra, b)
		}
	}
	if l := s.sim.Ledger(); l.Requests != 1 {
		t.Fatalf("the paused upstream was sent %d requests", l.Requests)
	}

	// A pause within max_wait holds the key's next request until it ends.
	s2 := newStack(t, stackOpts{
		maxWait:  5 * time.Second,
		sim:      &fusioosim.Config{Faults: fusioosim.Faults{Unavailable: 1, UnavailableRetryAfter: time.Second}},
		inBubble: true,
	})
	start := time.Now()
	s2.do("GET", "/v3/apps", "tok-p2", nil)
	s2.sim.SetFaults(fusioosim.Faults{})
	if resp, _ := s2.do("GET", "/v3/apps", "tok-p2", nil); resp.StatusCode != 200 {
		t.Fatalf("after the pause: %d", resp.StatusCode)
	}
	if el := time.Since(start); el != time.Second {
		t.Fatalf("second request answered %s after a 1 s pause began, want when it ended", el)
	}
}

// TestSerializedCreatesStop30054: concurrent creates to one App contend
// for its lock; after the first 30054 the gateway serializes that token's
// creates to the App, and a second burst sees no 30054 at all.
func TestSerializedCreatesStop30054(t *testing.T) {
	t.Parallel()
	synctest.Test(t, serializedCreatesStop30054)
}

func serializedCreatesStop30054(t *testing.T) {
	s := newStack(t, stackOpts{
		attempts: 5,
		maxWait:  30 * time.Second,
		sim:      &fusioosim.Config{Faults: fusioosim.Faults{CreateHold: 20 * time.Millisecond}},
		inBubble: true,
	})
	next := 0
	burst := func(n int) (fails int) {
		base := next
		next += n
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				resp, b := s.do("POST", "/v3/records/apps/app1", "tok-create", []byte(fmt.Sprintf(`{"title":"r%d"}`, base+i)))
				if resp.StatusCode != http.StatusOK {
					mu.Lock()
					fails++
					mu.Unlock()
					t.Logf("create: %d %s", resp.StatusCode, b)
				}
			})
		}
		wg.Wait()
		return fails
	}
	burst(8)
	first := s.sim.Ledger().Concurrent30054
	if first == 0 {
		t.Fatalf("8 concurrent creates never contended")
	}
	if fails := burst(16); fails != 0 {
		t.Fatalf("%d creates failed in the serialized burst", fails)
	}
	l := s.sim.Ledger()
	if l.Concurrent30054 != first {
		t.Fatalf("30054 went on after serializing: %d -> %d", first, l.Concurrent30054)
	}
	if l.Duplicates != 0 || l.Creates < 24-first {
		t.Fatalf("creates %d duplicates %d", l.Creates, l.Duplicates)
	}
}
