package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
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

// nets runs f over both of the test networks, in parallel: loopback (real
// listeners, the real clock, and a fake clock for the waits the test
// makes itself) and, inside a testing/synctest bubble, the in-process
// network. Waits on loopback are conditions with a deadline, so a loaded
// machine can make them slower but not wrong.
func nets(t *testing.T, f func(t *testing.T, n *testNet)) { eachNet(t, true, f) }

// netsInTurn is nets one network after the other, for a test that
// measures the heap.
func netsInTurn(t *testing.T, f func(t *testing.T, n *testNet)) { eachNet(t, false, f) }

func eachNet(t *testing.T, parallel bool, f func(t *testing.T, n *testNet)) {
	t.Run("loopback", func(t *testing.T) {
		if parallel {
			t.Parallel()
		}
		f(t, &testNet{fake: clockwork.NewFakeClock()})
	})
	t.Run("memnet", func(t *testing.T) {
		if parallel {
			t.Parallel()
		}
		synctest.Test(t, func(t *testing.T) { f(t, &testNet{inBubble: true}) })
	})
}

// testNet is one of the networks nets runs a test over.
type testNet struct {
	inBubble bool
	fake     *clockwork.FakeClock // loopback: the clock the test advances
}

// opts sets o up for the network: memnet in the bubble, or loopback with
// the fake clock when the test asks for it (withClock).
func (n *testNet) opts(o stackOpts, withClock bool) stackOpts {
	o.inBubble = n.inBubble
	if withClock && !n.inBubble {
		o.clock = n.fake
	}
	return o
}

// advance moves the gateway's clock by d: the bubble's by sleeping, the
// fake one by advancing it.
func (n *testNet) advance(d time.Duration) {
	if n.inBubble {
		time.Sleep(d)
		return
	}
	n.fake.Advance(d)
}

// until waits for cond, failing the test with what when it does not hold
// within 30 s (of the bubble's clock, or the machine's).
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 30 s: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gate is an upstream in front of another that holds every request until
// it is opened, and counts the requests that reached it: a test holds the
// first of several reads at the upstream until the others have joined it
// (or, wrongly, reached the upstream too), whatever the machine's load.
type gate struct {
	next    http.Handler
	arrived atomic.Int64
	mu      sync.Mutex
	open    chan struct{}
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) wrap(next http.Handler) http.Handler { g.next = next; return g }

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.arrived.Add(1)
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		g.next.ServeHTTP(w, r)
	case <-r.Context().Done():
	}
}

// release lets every request held, and every later one, through.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

// hold holds the requests that arrive from now on.
func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
}

// coalescingStack is a gateway with coalescing on in front of the
// simulator behind g.
func coalescingStack(t *testing.T, n *testNet, g *gate) *stack {
	return newStack(t, n.opts(stackOpts{
		coalesce: true, wrap: g.wrap,
		policy: quota.Policy{Limit: 1000, Window: time.Hour, Buckets: quota.DefaultBuckets},
	}, false))
}

// coalesced is the number of requests answered from another's read so far.
func (s *stack) coalesced() int64 {
	n, _ := s.metric("fusioo_gateway_coalesced_total")
	return int64(n)
}

// settle waits until the n requests sent since the gate counted from and
// the gateway counted from have each either reached the upstream or
// joined another's read, and returns how many reached it.
func (s *stack) settle(t *testing.T, g *gate, n, arrivedFrom, coalescedFrom int64) int64 {
	t.Helper()
	until(t, fmt.Sprintf("%d requests reached the upstream or joined a read", n), func() bool {
		return g.arrived.Load()-arrivedFrom+s.coalesced()-coalescedFrom == n
	})
	return g.arrived.Load() - arrivedFrom
}

// batch runs every send at once, holds their requests at g until the want
// requests they make have settled (reached the upstream or joined
// another's read), lets them through, waits for the sends to return, and
// returns how many reached the upstream.
func (s *stack) batch(t *testing.T, g *gate, want int64, sends ...func()) int64 {
	t.Helper()
	g.hold()
	from, cfrom := g.arrived.Load(), s.coalesced()
	var wg sync.WaitGroup
	for _, send := range sends {
		wg.Go(send)
	}
	up := s.settle(t, g, want, from, cfrom)
	g.release()
	wg.Wait()
	return up
}

// TestCoalescedReadsSpendOneUnit: 100 identical concurrent GETs of one
// token reach the upstream once and spend one unit of quota; every client
// gets the same answer, and RateLimit headers that say the quota left, not
// decremented for the 99 that shared it.
func TestCoalescedReadsSpendOneUnit(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		g := newGate()
		s := coalescingStack(t, n, g)
		var got []answer
		if up := s.batch(t, g, 100, func() { got = s.sendAll(100, "GET", "/v3/records/apps/app1?limit=5", "tok-c", nil) }); up != 1 {
			t.Fatalf("100 identical reads held at the upstream: %d reached it, want 1", up)
		}
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
// do reads that differ in body, nor reads whose body is over the buffer;
// writes and creates are never coalesced. Each batch is held at the
// upstream until every request has either reached it or joined another.
func TestCoalescingNeverSharesAcross(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		g := newGate()
		s := coalescingStack(t, n, g)
		batch := func(want int64, sends ...func()) int64 { t.Helper(); return s.batch(t, g, want, sends...) }
		tokens := func(tok string) func() { return func() { s.sendAll(10, "GET", "/v3/apps", tok, nil) } }
		if up := batch(20, tokens("tok-a"), tokens("tok-b")); up != 2 {
			t.Fatalf("two tokens' 20 reads reached the upstream %d times, want 2", up)
		}

		filters := func(i int) []byte { return []byte(`{"filters":{"name":{"equal":"` + strconv.Itoa(i%2) + `"}}}`) }
		var got []answer
		if up := batch(10, func() { got = s.sendAll(10, "POST", "/v3/records/apps/app1/filter", "tok-a", filters) }); up != 2 {
			t.Fatalf("10 filters with 2 distinct bodies reached the upstream %d times, want 2", up)
		}
		for i, a := range got {
			if a.status != 200 {
				t.Fatalf("filter %d: %d %s", i, a.status, a.body)
			}
		}

		// A body larger than coalescing's buffer is streamed, not shared.
		big := []byte(`{"filters":{},"pad":"` + strings.Repeat("x", 1<<20) + `"}`)
		if up := batch(2, func() { s.sendAll(2, "POST", "/v3/records/apps/app1/filter", "tok-a", func(int) []byte { return big }) }); up != 2 {
			t.Fatalf("2 filters with a body over the buffer reached the upstream %d times, want 2", up)
		}

		same := func(int) []byte { return []byte(`{"name":"x"}`) }
		if up := batch(5, func() { s.sendAll(5, "PUT", "/v3/records/rec1", "tok-a", same) }); up != 5 {
			t.Fatalf("5 identical writes reached the upstream %d times, want 5", up)
		}
		if up := batch(5, func() { s.sendAll(5, "POST", "/v3/records/apps/app2", "tok-a", same) }); up != 5 {
			t.Fatalf("5 identical creates reached the upstream %d times, want 5", up)
		}
	})
}

// TestCoalescedLeaderLeaves: the client whose read started the shared
// exchange leaves; the others still get the whole answer, and the
// exchange is cancelled only when the last one has left.
func TestCoalescedLeaderLeaves(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		g := newGate()
		s := coalescingStack(t, n, g)
		first, leave := context.WithCancel(context.Background())
		done := make(chan []answer)
		go func() { done <- s.sendAll(1, "GET", "/v3/apps", "tok-l", nil, first) }()
		until(t, "the first read reached the upstream", func() bool { return g.arrived.Load() == 1 })
		followed := make(chan []answer)
		go func() { followed <- s.sendAll(5, "GET", "/v3/apps", "tok-l", nil) }()
		until(t, "5 reads joined the first", func() bool { return s.coalesced() == 5 })
		leave()
		if a := (<-done)[0]; !errors.Is(a.err, context.Canceled) {
			t.Fatalf("the leader: %+v, want its own cancellation", a)
		}
		g.release()
		for i, a := range <-followed {
			if a.err != nil || a.status != 200 {
				t.Fatalf("follower %d after the leader left: %d %v", i, a.status, a.err)
			}
		}
		if l := s.sim.Ledger(); l.Requests != 1 || g.arrived.Load() != 1 {
			t.Fatalf("upstream saw %d requests (%d arrived), want 1", l.Requests, g.arrived.Load())
		}

		// Everyone leaves: the exchange is cancelled at the upstream.
		var arrived atomic.Int64
		cancelled := make(chan struct{})
		hang := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived.Add(1)
			<-r.Context().Done()
			close(cancelled)
		})
		s = newStack(t, n.opts(stackOpts{coalesce: true, upstream: hang}, false))
		ctx, cancel := context.WithCancel(context.Background())
		left := make(chan []answer)
		go func() { left <- s.sendAll(3, "GET", "/v3/apps/app9", "tok-l", nil, ctx, ctx, ctx) }()
		until(t, "3 reads in one exchange", func() bool { return arrived.Load() == 1 && s.coalesced() == 2 })
		cancel()
		for _, a := range <-left {
			if !errors.Is(a.err, context.Canceled) {
				t.Fatalf("a client that left: %+v", a)
			}
		}
		select {
		case <-cancelled:
		case <-time.After(30 * time.Second):
			t.Fatal("the exchange outlived every client waiting for it by 30 s")
		}
	})
}

// TestCoalescedErrorLogsItsCode: a shared error answer is logged with its
// Fusioo code for every request that got it, not only the one that sent
// it.
func TestCoalescedErrorLogsItsCode(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		g := newGate()
		s := coalescingStack(t, n, g)
		var got []answer
		if up := s.batch(t, g, 3, func() { got = s.sendAll(3, "GET", "/v3/records/no-such-record", "tok-e", nil) }); up != 1 {
			t.Fatalf("3 identical reads: %d reached the upstream, want 1", up)
		}
		for i, a := range got {
			if a.status != http.StatusBadRequest {
				t.Fatalf("client %d: %d %s", i, a.status, a.body)
			}
		}
		type line struct {
			Msg       string `json:"msg"`
			Code      int    `json:"code"`
			Coalesced bool   `json:"coalesced"`
		}
		logged := func() []line {
			var lines []line
			for _, l := range strings.Split(strings.TrimSpace(s.logs.String()), "\n") {
				var e line
				if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "request" {
					lines = append(lines, e)
				}
			}
			return lines
		}
		// A request is logged once its answer is sent.
		until(t, "3 requests logged", func() bool { return len(logged()) >= 3 })
		lines := logged()
		coalesced := 0
		for _, l := range lines {
			if l.Code != int(fusioo.CodeRecordNotFound) {
				t.Fatalf("a request line with code %d, want %d: %+v", l.Code, fusioo.CodeRecordNotFound, lines)
			}
			if l.Coalesced {
				coalesced++
			}
		}
		if len(lines) != 3 || coalesced != 2 {
			t.Fatalf("%d request lines, %d coalesced; want 3 and 2", len(lines), coalesced)
		}
	})
}

// TestLeaderGoneMidBodyLogged: the client of a read nobody shares leaves
// while its body comes (the answer goes to it alone, unrecorded, so its
// leaving ends the exchange): the request is logged as 499, the client
// gone, not as the 200 the upstream began.
func TestLeaderGoneMidBodyLogged(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		up := bodyStarted(func(r *http.Request) { <-r.Context().Done() })
		s := newStack(t, n.opts(stackOpts{upstream: up, coalesce: true}, false))
		resp := s.open("GET", "/v3/records/apps/app1", "tok-mid", nil)
		buf := make([]byte, 9)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %q %v", resp.StatusCode, buf, err)
		}
		resp.Body.Close() // mid-body: the connection is closed
		type line struct {
			Msg    string `json:"msg"`
			Status int    `json:"status"`
		}
		var got []line
		until(t, "the request logged", func() bool {
			got = got[:0]
			for _, l := range strings.Split(strings.TrimSpace(s.logs.String()), "\n") {
				var e line
				if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "request" {
					got = append(got, e)
				}
			}
			return len(got) > 0
		})
		if len(got) != 1 || got[0].Status != 499 {
			t.Fatalf("logged %+v, want one request with status 499 (client gone)", got)
		}
	})
}

// TestAbortCutsStreamingRead: the end of a shutdown's grace period
// (Abort) cancels a read whose body is still streaming, shared by nobody
// (its answer unrecorded) or not coalesced at all: the upstream exchange
// ends and the client's answer is cut (found by review: an unrecorded
// flight had left the group, out of Abort's reach).
func TestAbortCutsStreamingRead(t *testing.T) {
	t.Parallel()
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var ended atomic.Bool
				up := bodyStarted(func(r *http.Request) {
					<-r.Context().Done()
					ended.Store(true)
				})
				s := newStack(t, stackOpts{upstream: up, coalesce: coalesce, inBubble: true})
				resp := s.open("GET", "/v3/records/apps/app1", "tok-abort", nil)
				defer resp.Body.Close()
				buf := make([]byte, 9)
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				if ended.Load() {
					t.Fatal("the exchange ended before Abort")
				}
				s.handler.Abort()
				if _, err := io.ReadAll(resp.Body); err == nil {
					t.Fatal("the client's answer ended whole after Abort, want it cut")
				}
				synctest.Wait()
				if !ended.Load() {
					t.Fatal("Abort did not end the upstream exchange of a streaming read")
				}
			})
		})
	}
}

// TestCutBodyCutsSharedRead: an upstream body cut midway cuts the answer
// of the read that led the exchange and of the one that shared it: neither
// client is told a truncated answer was whole (found in review: the
// exchange ran under the flight's context, where ReverseProxy did not see
// it served a client, so it ended the copy as if complete).
func TestCutBodyCutsSharedRead(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		// The upstream's connection cut mid-body.
		up := bodyStarted(func(*http.Request) { panic(http.ErrAbortHandler) })
		gated := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release; up.ServeHTTP(w, r) })
		s := newStack(t, stackOpts{upstream: gated, coalesce: true, inBubble: true})
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				req, _ := http.NewRequest("GET", s.gw.URL+"/v3/records/apps/app1", nil)
				req.Header.Set("Authorization", "Bearer tok-cut")
				resp, err := s.client.Do(req)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				errs <- err
			}()
		}
		synctest.Wait()
		if n := s.coalesced(); n != 1 {
			t.Fatalf("%d reads shared the exchange, want 1", n)
		}
		close(release)
		for i := range 2 {
			if err := <-errs; err == nil {
				t.Fatalf("client %d: a cut upstream body ended whole", i)
			}
		}
	})
}

// bodyStarted is an upstream that sends a 200's header and the start of a
// JSON body, flushed, then does then (waits, or cuts the connection).
func bodyStarted(then func(*http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"data":[`)
		w.(http.Flusher).Flush()
		then(r)
	})
}
