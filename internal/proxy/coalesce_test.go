package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
)

// answer is one client's view of a response.
type answer struct {
	status    int
	body      string
	remaining string
	err       error
}

// send issues n requests at once (each in its own goroutine, on the
// stack's client) and returns their answers once all are in flight and
// then answered; ctxs, when given, are the requests' contexts by index.
func (s *stack) sendAll(n int, method, path, token string, body func(i int) []byte, ctxs ...context.Context) []answer {
	out := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx := context.Background()
			if i < len(ctxs) {
				ctx = ctxs[i]
			}
			var rd io.Reader
			if body != nil {
				rd = bytes.NewReader(body(i))
			}
			req, _ := http.NewRequestWithContext(ctx, method, s.gw.URL+path, rd)
			req.Header.Set("Authorization", "Bearer "+token)
			if body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := s.client.Do(req)
			if err != nil {
				out[i].err = err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			out[i] = answer{resp.StatusCode, string(b), resp.Header.Get("RateLimit-Remaining"), err}
		})
	}
	wg.Wait()
	return out
}

// coalescingStack is a gateway with coalescing on in front of a simulator
// that takes 100 ms to answer, so that requests sent together are in
// flight together (on the bubble's clock).
func coalescingStack(t *testing.T) *stack {
	return newStack(t, stackOpts{
		coalesce: true, inBubble: true,
		policy: quota.Policy{Limit: 1000, Window: time.Hour, Buckets: quota.DefaultBuckets},
		sim:    &fusioosim.Config{Faults: fusioosim.Faults{Latency: 100 * time.Millisecond}},
	})
}

// TestCoalescedReadsSpendOneUnit: 100 identical concurrent GETs of one
// token reach the upstream once and spend one unit of quota; every client
// gets the same answer, and RateLimit headers that say the quota left, not
// decremented for the 99 that shared it.
func TestCoalescedReadsSpendOneUnit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := coalescingStack(t)
		got := s.sendAll(100, "GET", "/v3/records/apps/app1?limit=5", "tok-c", nil)
		for i, a := range got {
			if a.err != nil || a.status != 200 || a.body != got[0].body || a.remaining != "999" {
				t.Fatalf("client %d: %d remaining %q %v, body %.60s (first: %.60s)", i, a.status, a.remaining, a.err, a.body, got[0].body)
			}
		}
		if l := s.sim.Ledger(); l.Requests != 1 || l.Charged != 1 {
			t.Fatalf("upstream saw %d requests, %d charged; want 1", l.Requests, l.Charged)
		}
		if q, _ := s.lim.Status(t.Context(), proxy.NewIdentifier(nil).Key("tok-c")); q.Remaining != 999 {
			t.Fatalf("quota left %d, want 999", q.Remaining)
		}
		if n, _ := s.metric("fusioo_gateway_coalesced_total", "route", "GET /records/apps/{app}"); n != 99 {
			t.Fatalf("coalesced_total %v, want 99", n)
		}
		// Done: the next identical read is sent on its own.
		if resp, _ := s.do("GET", "/v3/records/apps/app1?limit=5", "tok-c", nil); resp.StatusCode != 200 || s.sim.Ledger().Requests != 2 {
			t.Fatalf("a read after the shared one: %d, upstream saw %d", resp.StatusCode, s.sim.Ledger().Requests)
		}
	})
}

// TestCoalescingNeverSharesAcross: two tokens never share an answer, nor
// do reads that differ in query, Accept or body; writes and creates are
// never coalesced.
func TestCoalescingNeverSharesAcross(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := coalescingStack(t)
		var wg sync.WaitGroup
		for _, tok := range []string{"tok-a", "tok-b"} {
			wg.Go(func() { s.sendAll(10, "GET", "/v3/apps", tok, nil) })
		}
		wg.Wait()
		if l := s.sim.Ledger(); l.Requests != 2 {
			t.Fatalf("two tokens' reads reached the upstream %d times, want 2", l.Requests)
		}

		filters := func(i int) []byte { return []byte(`{"filters":{"name":{"equal":"` + strconv.Itoa(i%2) + `"}}}`) }
		got := s.sendAll(10, "POST", "/v3/records/apps/app1/filter", "tok-a", filters)
		if l := s.sim.Ledger(); l.ByRoute["POST /records/apps/{app}/filter"] != 2 {
			t.Fatalf("10 filters with 2 distinct bodies reached the upstream %d times, want 2", l.ByRoute["POST /records/apps/{app}/filter"])
		}
		for i, a := range got {
			if a.status != 200 {
				t.Fatalf("filter %d: %d %s", i, a.status, a.body)
			}
		}

		// A body larger than coalescing's buffer is streamed, not shared.
		big := []byte(`{"filters":{},"pad":"` + strings.Repeat("x", 1<<20) + `"}`)
		before := s.sim.Ledger().Requests
		s.sendAll(2, "POST", "/v3/records/apps/app1/filter", "tok-a", func(int) []byte { return big })
		if n := s.sim.Ledger().Requests - before; n != 2 {
			t.Fatalf("2 filters with a body over the buffer reached the upstream %d times, want 2", n)
		}

		before = s.sim.Ledger().Requests
		s.sendAll(5, "PUT", "/v3/records/rec1", "tok-a", func(int) []byte { return []byte(`{"name":"x"}`) })
		s.sendAll(5, "POST", "/v3/records/apps/app2", "tok-a", func(i int) []byte { return []byte(`{"name":"x` + strconv.Itoa(i) + `"}`) })
		if n := s.sim.Ledger().Requests - before; n != 10 {
			t.Fatalf("5 writes and 5 creates reached the upstream %d times, want 10", n)
		}
	})
}

// TestCoalescedLeaderLeaves: the client whose read started the shared
// exchange leaves; the others still get the whole answer, and the
// exchange is cancelled only when the last one has left.
func TestCoalescedLeaderLeaves(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := coalescingStack(t)
		first, leave := context.WithCancel(context.Background())
		go func() {
			// The leader, sent first: it leaves 50 ms in.
			time.Sleep(50 * time.Millisecond)
			leave()
		}()
		done := make(chan []answer)
		go func() { done <- s.sendAll(1, "GET", "/v3/apps", "tok-l", nil, first) }()
		synctest.Wait()
		others := s.sendAll(5, "GET", "/v3/apps", "tok-l", nil)
		if a := (<-done)[0]; !errors.Is(a.err, context.Canceled) {
			t.Fatalf("the leader: %+v, want its own cancellation", a)
		}
		for i, a := range others {
			if a.err != nil || a.status != 200 {
				t.Fatalf("follower %d after the leader left: %d %v", i, a.status, a.err)
			}
		}
		if l := s.sim.Ledger(); l.Requests != 1 {
			t.Fatalf("upstream saw %d requests, want 1", l.Requests)
		}

		// Everyone leaves: the exchange is cancelled at the upstream.
		cancelled := make(chan struct{})
		hang := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
			close(cancelled)
		})
		s = newStack(t, stackOpts{coalesce: true, inBubble: true, upstream: hang})
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(50 * time.Millisecond); cancel() }()
		got := s.sendAll(3, "GET", "/v3/apps/app9", "tok-l", nil, ctx, ctx, ctx)
		for _, a := range got {
			if !errors.Is(a.err, context.Canceled) {
				t.Fatalf("a client that left: %+v", a)
			}
		}
		synctest.Wait()
		select {
		case <-cancelled:
		default:
			t.Fatal("the exchange outlived every client waiting for it")
		}
	})
}
