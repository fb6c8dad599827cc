package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// The proxy's rules on their own: a fake limiter, a fake base transport
// (a plain http.RoundTripper, no retry package below it), the handler
// called directly. The loopback stack tests check the same rules with
// real parts.

// fakeLimiter admits what allow says, and records what it is asked.
type fakeLimiter struct {
	mu       sync.Mutex
	allow    func(n int) bool // n: admissions asked so far, from 1
	admits   int
	keys     []string // of each admission
	forgets  int
	full     bool // refuse every admission ReasonKeysFull
	exhausts []time.Duration
}

func (l *fakeLimiter) Admit(_ context.Context, key string, _ time.Time) (limiter.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.admits++
	l.keys = append(l.keys, key)
	ok := l.allow == nil || l.allow(l.admits)
	d := limiter.Decision{Allowed: ok, Result: quota.Result{Allowed: ok, Limit: 100, Remaining: 50}}
	if !ok {
		d.RetryAfter = 30 * time.Second
	}
	if l.full {
		d = limiter.Decision{Reason: limiter.ReasonKeysFull, Result: quota.Result{RetryAfter: 30 * time.Second}}
	}
	return d, nil
}

func (l *fakeLimiter) Exhaust(_ context.Context, _ string, d time.Duration) error {
	l.mu.Lock()
	l.exhausts = append(l.exhausts, d)
	l.mu.Unlock()
	return nil
}

func (l *fakeLimiter) Forget(string) {
	l.mu.Lock()
	l.forgets++
	l.mu.Unlock()
}

func (l *fakeLimiter) forgotten() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.forgets
}

func (l *fakeLimiter) Status(context.Context, string) (quota.Result, error) {
	return quota.Result{Limit: 100, Remaining: 50}, nil
}

func (l *fakeLimiter) counts() (int, []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.admits, append([]time.Duration(nil), l.exhausts...)
}

// fakeUpstream is a base transport answering attempt n (from 0) with
// answers[min(n, len-1)].
type fakeUpstream struct {
	mu      sync.Mutex
	answers []fakeAnswer
	seen    []*http.Request
	blocked chan struct{} // gets a value when a block answer starts waiting
	discard bool          // count attempts, keep no request
	n       int
}

type fakeAnswer struct {
	status     int
	code       fusioo.Code
	retryAfter string
	err        error // returned instead of an answer
	written    bool  // with err: the request reached the connection first
	block      bool  // written, then wait for the request's end
}

func (u *fakeUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	u.mu.Lock()
	a := u.answers[min(u.n, len(u.answers)-1)]
	u.n++
	if !u.discard {
		u.seen = append(u.seen, req)
	}
	u.mu.Unlock()
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	trace := httptrace.ContextClientTrace(req.Context())
	if (a.written || a.block) && trace != nil && trace.WroteHeaders != nil {
		trace.WroteHeaders()
	}
	if a.block {
		u.blocked <- struct{}{}
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	if a.err != nil {
		return nil, a.err
	}
	rec := httptest.NewRecorder()
	if a.retryAfter != "" {
		rec.Header().Set("Retry-After", a.retryAfter)
	}
	if a.status >= 400 {
		fusioo.WriteError(rec, a.status, a.code, "")
	} else {
		fusioo.WriteSuccess(rec, map[string]int{"ok": 1})
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

func (u *fakeUpstream) attempts() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

// upstreamCounts records Observer.Upstream calls.
type upstreamCounts struct {
	mu        sync.Mutex
	statuses  []int
	exhausted int
}

func (o *upstreamCounts) Request(string, string, int, time.Duration) {}
func (o *upstreamCounts) Coalesced(string)                           {}
func (o *upstreamCounts) CacheRequest(string, string)                {}
func (o *upstreamCounts) Upstream(_ string, status int, _ fusioo.Code, _ time.Duration) {
	o.mu.Lock()
	o.statuses = append(o.statuses, status)
	o.mu.Unlock()
}
func (o *upstreamCounts) UpstreamExhausted() {
	o.mu.Lock()
	o.exhausted++
	o.mu.Unlock()
}

type loopRig struct {
	h   *proxy.Handler
	lim *fakeLimiter
	up  *fakeUpstream
	obs *upstreamCounts
	clk *clockwork.FakeClock
}

func newLoopRig(t *testing.T, attempts int, answers ...fakeAnswer) *loopRig {
	return newLoopRigWith(t, nil, attempts, answers...)
}

// fastRetry is retry.DefaultConfig without waits: no backoff and no
// budget, attempts at most per request.
func fastRetry(routes *fusioo.Routes, attempts int, clk clockwork.Clock) retry.Config {
	rc := retry.DefaultConfig()
	rc.Routes, rc.MaxAttempts, rc.Clock = routes, attempts, clk
	rc.BaseDelay, rc.ConcurrentDelay = 0, 0
	rc.BudgetWindow = 0 // no budget
	return rc
}

// newLoopRigWith is newLoopRig with edit applied to the handler's Config.
func newLoopRigWith(t *testing.T, edit func(*proxy.Config), attempts int, answers ...fakeAnswer) *loopRig {
	t.Helper()
	routes, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	r := &loopRig{lim: &fakeLimiter{}, up: &fakeUpstream{answers: answers}, obs: &upstreamCounts{}, clk: clockwork.NewFakeClock()}
	u, _ := url.Parse("http://upstream.invalid")
	cfg := proxy.Config{
		Upstream: u, Transport: r.up, Limiter: r.lim, Routes: routes, Observer: r.obs, Clock: r.clk,
		Retry:   retry.New(fastRetry(routes, attempts, r.clk)),
		MaxWait: 5 * time.Second, Limit: 100, Window: time.Hour, MaxPause: time.Minute,
	}
	if edit != nil {
		edit(&cfg)
	}
	r.h = proxy.New(cfg)
	return r
}

type loopAnswer struct {
	status     int
	code       fusioo.Code
	message    string
	retryAfter string
}

func (r *loopRig) serve(t *testing.T, method, path string) loopAnswer {
	t.Helper()
	var body io.Reader
	if method == "POST" || method == "PUT" {
		body = strings.NewReader(`{"name":"x"}`)
	}
	req := httptest.NewRequest(method, path, body)
	req.Header.Set("Authorization", "Bearer tok-loop")
	return r.serveReq(req)
}

func (r *loopRig) serveReq(req *http.Request) loopAnswer {
	w := httptest.NewRecorder()
	r.h.ServeHTTP(w, req)
	var env struct {
		Code    fusioo.Code `json:"code"`
		Message string      `json:"message"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &env)
	return loopAnswer{w.Code, env.Code, env.Message, w.Header().Get("Retry-After")}
}

// TestLoopCountsEveryAttemptWithAPlainTransport: below the loop is any
// http.RoundTripper; every attempt's answer is counted, each retry is
// charged to the quota, and the client gets the last answer.
func TestLoopCountsEveryAttemptWithAPlainTransport(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 3, fakeAnswer{status: 503, code: fusioo.CodeUnavailable}, fakeAnswer{status: 200})
	if a := r.serve(t, "GET", "/v3/apps"); a.status != 200 {
		t.Fatalf("got %+v", a)
	}
	admits, _ := r.lim.counts()
	if r.up.attempts() != 2 || admits != 2 || len(r.obs.statuses) != 2 || r.obs.statuses[0] != 503 || r.obs.statuses[1] != 200 {
		t.Fatalf("attempts %d, admits %d, counted %v", r.up.attempts(), admits, r.obs.statuses)
	}
}

// TestLoopRetryRefusedByQuota: a retry the quota refuses is not sent; the
// client gets the upstream's answer.
func TestLoopRetryRefusedByQuota(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 3, fakeAnswer{status: 503, code: fusioo.CodeUnavailable}, fakeAnswer{status: 200})
	r.lim.allow = func(n int) bool { return n == 1 }
	if a := r.serve(t, "GET", "/v3/apps"); a.status != 503 || a.code != fusioo.CodeUnavailable {
		t.Fatalf("got %+v", a)
	}
	if r.up.attempts() != 1 {
		t.Fatalf("%d attempts: the refused retry was sent", r.up.attempts())
	}
}

// TestLoopLearns20005: an upstream 20005 blocks the key for a window, or
// for the upstream's Retry-After; the retry then waits for the quota,
// which refuses it, and the client gets the upstream's 429.
func TestLoopLearns20005(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		retryAfter string
		block      time.Duration
	}{{"", time.Hour}, {"120", 2 * time.Minute}} {
		r := newLoopRig(t, 3, fakeAnswer{status: 429, code: fusioo.CodeRateLimited, retryAfter: c.retryAfter})
		r.lim.allow = func(n int) bool { return n == 1 }
		a := r.serve(t, "GET", "/v3/apps")
		_, ex := r.lim.counts()
		if a.status != 429 || a.code != fusioo.CodeRateLimited || len(ex) != 1 || ex[0] != c.block || r.obs.exhausted != 1 {
			t.Fatalf("Retry-After %q: got %+v, blocked %v, exhausted %d", c.retryAfter, a, ex, r.obs.exhausted)
		}
	}
}

// TestLoopUnchargedRoute: a ping costs no admission, retries included.
func TestLoopUnchargedRoute(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 3, fakeAnswer{status: 503, code: fusioo.CodeUnavailable}, fakeAnswer{status: 200})
	if a := r.serve(t, "GET", "/v3/ping"); a.status != 200 {
		t.Fatalf("got %+v", a)
	}
	if admits, _ := r.lim.counts(); admits != 0 || r.up.attempts() != 2 {
		t.Fatalf("admits %d, attempts %d", admits, r.up.attempts())
	}
}

// TestLoopPause: a 503 with Retry-After pauses the whole upstream; a
// request of another token that cannot wait that long is answered
// 503/10004 at once with Retry-After, and nothing reaches the upstream.
func TestLoopPause(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 1, fakeAnswer{status: 503, code: fusioo.CodeUnavailable, retryAfter: "30"})
	if a := r.serve(t, "GET", "/v3/apps"); a.status != 503 {
		t.Fatalf("first: %+v", a)
	}
	a := r.serve(t, "GET", "/v3/apps")
	if a.status != 503 || a.code != fusioo.CodeUnavailable || a.retryAfter != "30" || r.up.attempts() != 1 {
		t.Fatalf("paused: %+v after %d attempts", a, r.up.attempts())
	}
	if _, ex := r.lim.counts(); len(ex) != 0 {
		t.Fatalf("a pause blocked the key: %v", ex)
	}
}

// TestLoopTransportErrors: what a failed exchange is called depends on
// whether the request was written.
func TestLoopTransportErrors(t *testing.T) {
	t.Parallel()
	reset := errors.New("connection reset by peer")
	for _, c := range []struct {
		name   string
		answer fakeAnswer
		status int
		code   fusioo.Code
	}{
		{"not written", fakeAnswer{err: reset}, 503, fusioo.CodeUnavailable},
		{"written", fakeAnswer{err: reset, written: true}, 504, fusioo.CodeInternal},
	} {
		r := newLoopRig(t, 3, c.answer)
		a := r.serve(t, "POST", "/v3/records/apps/app1")
		if a.status != c.status || a.code != c.code {
			t.Errorf("%s: got %+v, want %d/%d", c.name, a, c.status, c.code)
		}
		// A create that may have been applied is never sent again; one
		// that was not written is (here: every attempt).
		if want := map[bool]int{false: 3, true: 1}[c.answer.written]; r.up.attempts() != want {
			t.Errorf("%s: %d attempts, want %d", c.name, r.up.attempts(), want)
		}
	}
}

// TestLoopAbort: Abort cancels a request at the upstream through the
// handler's own context when the server is not wired with BaseContext;
// the create may have been applied and is answered so.
func TestLoopAbort(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 3, fakeAnswer{block: true})
	r.up.blocked = make(chan struct{}, 1)
	done := make(chan loopAnswer)
	go func() { done <- r.serve(t, "POST", "/v3/records/apps/app1") }()
	<-r.up.blocked
	r.h.Abort()
	a := <-done
	if a.status != 504 || a.code != fusioo.CodeInternal || !strings.Contains(a.message, "may have been applied") || r.up.attempts() != 1 {
		t.Fatalf("got %+v after %d attempts", a, r.up.attempts())
	}
}
