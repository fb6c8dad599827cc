package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"errors"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// TestWrittenIsStickyAcrossAttempts: a PUT (replay-safe with
// idempotent_writes, the gateway's default) is written and its connection
// resets, or is answered 504 (it may have been applied); the retry fails
// to dial. The client is told 504/10001 "may have been applied", not
// 503/10004 "nothing was sent" (found by review: only the last attempt
// counted).
func TestWrittenIsStickyAcrossAttempts(t *testing.T) {
	t.Parallel()
	reset := errors.New("connection reset by peer")
	dial := errors.New("dial tcp: connection refused")
	for _, first := range []fakeAnswer{
		{err: reset, written: true}, // reset after the PUT was written
		{status: 504},               // the upstream's own 504
	} {
		r := newLoopRigWith(t, func(c *proxy.Config) {
			rc := fastRetry(c.Routes, 2, c.Clock)
			rc.IdempotentWrites = true
			c.Retry = retry.New(rc)
		}, 2, first, fakeAnswer{err: dial})
		a := r.serve(t, "PUT", "/v3/records/r1")
		if r.up.attempts() != 2 {
			t.Fatalf("first %+v: %d attempts", first, r.up.attempts())
		}
		if a.status == 503 && a.code == fusioo.CodeUnavailable {
			t.Errorf("first attempt %+v reached the upstream, yet the client got %d/%d %q", first, a.status, a.code, a.message)
		}
	}
}

// TestRetryAfterSaysTheBlock: the upstream answers 429/20005 with
// "Retry-After: 0"; the gateway blocks the key for a whole window, and
// the client is told that, not the upstream's 0 (found by review).
func TestRetryAfterSaysTheBlock(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 3, fakeAnswer{status: 429, code: fusioo.CodeRateLimited, retryAfter: "0"})
	r.lim.allow = func(n int) bool { return n == 1 }
	a := r.serve(t, "GET", "/v3/apps")
	_, ex := r.lim.counts()
	t.Logf("client got %d/%d Retry-After %q; key blocked for %v", a.status, a.code, a.retryAfter, ex)
	if a.status == 429 && len(ex) == 1 && a.retryAfter == "0" && ex[0] > 0 {
		t.Fatalf("Retry-After %q told to the client, key blocked for %v", a.retryAfter, ex[0])
	}
}

// arrivals records when (on clk) each attempt reached the upstream.
type arrivals struct {
	rt  http.RoundTripper
	clk clockwork.Clock
	mu  sync.Mutex
	at  []time.Time
}

func (a *arrivals) RoundTrip(req *http.Request) (*http.Response, error) {
	a.mu.Lock()
	a.at = append(a.at, a.clk.Now())
	a.mu.Unlock()
	return a.rt.RoundTrip(req)
}

// signalReader tells, on its first Read, that the handler reads the body.
type signalReader struct {
	io.Reader
	once    sync.Once
	reading chan struct{}
}

func (r *signalReader) Read(p []byte) (int, error) {
	r.once.Do(func() { close(r.reading) })
	return r.Reader.Read(p)
}

// TestSlowBodyAdmittedOnceArrived: a replayable body is read before the
// quota slot is counted, so however slowly a client sends it, the slot is
// used at once (Fusioo counts a request when it arrives). Before, the slot
// was counted first and the body read after: with quota.limit = 1 per
// minute, a slow body reached the upstream beside the next slot's request
// (found by review).
func TestSlowBodyAdmittedOnceArrived(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClock()
	store := quota.NewMemoryStore(quota.Policy{Limit: 1, Window: time.Minute, Buckets: quota.DefaultBuckets}, clk)
	lc := limiter.DefaultConfig()
	lc.Store, lc.Clock, lc.MaxWait, lc.MaxDepth, lc.MaxQueued = store, clk, 5*time.Second, 10, 100
	lim := limiter.New(lc)
	up := &arrivals{rt: &fakeUpstream{answers: []fakeAnswer{{status: 200}}}, clk: clk}
	r := newLoopRigWith(t, func(c *proxy.Config) {
		c.Limiter, c.Transport, c.Limit, c.Window = lim, up, 1, time.Minute
	}, 3)
	pr, pw := io.Pipe()
	body := &signalReader{Reader: pr, reading: make(chan struct{})}
	a := httptest.NewRequest("POST", "/v3/records/apps/app1/filter", body)
	a.Header.Set("Authorization", "Bearer tok-slow")
	done := make(chan loopAnswer)
	go func() { done <- r.serveReq(a) }()
	<-body.reading
	if c := store.Counted(); len(c) != 0 {
		t.Fatalf("a slot was counted while the body was still arriving: %v", c)
	}
	clk.Advance(2 * time.Minute) // the client takes its time
	_, _ = pw.Write([]byte(`{"filters":{}}`))
	_ = pw.Close()
	if got := <-done; got.status != 200 {
		t.Fatalf("A: %+v", got)
	}
	if c := store.Counted(); len(c) != 1 {
		t.Fatalf("counted %v, want A's one slot", c)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.at) != 1 || !up.at[0].Equal(clk.Now()) {
		t.Fatalf("upstream arrivals %v, want one now (%v)", up.at, clk.Now())
	}
}

type statusObs struct {
	upstreamCounts
	mu     sync.Mutex
	status []int
}

func (o *statusObs) Request(_, _ string, status int, _ time.Duration) {
	o.mu.Lock()
	o.status = append(o.status, status)
	o.mu.Unlock()
}

// TestClientGoneMidBackoffRecorded: the client leaves while the loop
// waits out an upstream 503's Retry-After; the request is recorded
// (metrics, log) as 499 (client gone), not as answered 503 (found by
// review).
func TestClientGoneMidBackoffRecorded(t *testing.T) {
	t.Parallel()
	obs := &statusObs{}
	r := newLoopRigWith(t, func(c *proxy.Config) { c.Observer, c.MaxPause = obs, 0 }, 3,
		fakeAnswer{status: 503, code: fusioo.CodeUnavailable, retryAfter: "2"})
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/v3/apps", nil).WithContext(ctx)
	req.Header.Set("Authorization", "Bearer tok-gone")
	done := make(chan struct{})
	go func() { r.serveReq(req); close(done) }()
	_ = r.clk.BlockUntilContext(context.Background(), 1) // sleeping out the Retry-After
	cancel()
	<-done
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.status) != 1 || obs.status[0] != 499 {
		t.Fatalf("client left mid-backoff; recorded status %v, want [499]", obs.status)
	}
}
