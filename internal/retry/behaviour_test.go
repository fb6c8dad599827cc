package retry

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

// TestLoadWithFaults sends 2000 creates, 32 at a time, to a simulator that
// answers 5% of requests 503 and 5% of creates 30054, with the default
// attempts and budget: fewer than 0.1% of requests may fail and upstream
// attempts may be at most 1.25× the requests. No create is applied twice.
func TestLoadWithFaults(t *testing.T) {
	const (
		requests = 2000
		workers  = 32
	)
	s := newSim(t, fusioosim.Config{Seed: 42, Faults: fusioosim.Faults{Unavailable: 0.05, Concurrent: 0.05}})
	obs := newCountObserver()
	var admits atomic.Int64
	tr := newTransport(t, defaultConfig(t, func(c *Config) {
		c.BaseDelay, c.ConcurrentDelay = time.Millisecond, time.Millisecond
		c.Observer = obs
	}))
	var failed, ok atomic.Int64
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				h := &Hooks{
					Key:      "key-1",
					Deadline: time.Now().Add(10 * time.Second),
					Admit: func(context.Context, time.Time) (bool, error) {
						admits.Add(1)
						return true, nil
					},
				}
				// One App per request: the faults measured are the
				// injected ones, not real lock contention.
				res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: fmt.Sprintf("/v3/records/apps/load%d", i), body: createBody(i), hooks: h})
				if res.err != nil || res.status != 200 {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	for i := 0; i < requests; i++ {
		next <- i
	}
	close(next)
	wg.Wait()

	l := s.ledger()
	failures := float64(failed.Load()) / requests
	ratio := float64(l.Requests) / requests
	t.Logf("%d requests: %d failed (%.3f%%), %d upstream attempts (%.3f×), injected %v, retries %v, budget refusals %d",
		requests, failed.Load(), 100*failures, l.Requests, ratio, l.Injected, obs.retries, obs.exhaustedN())
	if failures >= 0.001 {
		t.Errorf("failures %.3f%%, want < 0.1%%", 100*failures)
	}
	if ratio > 1.25 {
		t.Errorf("amplification %.3f×, want ≤ 1.25×", ratio)
	}
	if l.Duplicates != 0 || int64(l.Creates) != ok.Load() {
		t.Errorf("creates %d for %d successes, duplicates %d", l.Creates, ok.Load(), l.Duplicates)
	}
	if admits.Load() != int64(obs.total()) || int64(l.Requests) != requests+admits.Load() {
		t.Errorf("%d admits, %d retries, %d attempts: every retry must be admitted", admits.Load(), obs.total(), l.Requests)
	}
}

// TestCreatesNeverDuplicated sends creates through every fault the
// simulator has: no create is ever applied twice, every 504 and reset of a
// create reaches the client as it came.
func TestCreatesNeverDuplicated(t *testing.T) {
	t.Parallel()
	const requests = 300
	s := newSim(t, fusioosim.Config{Seed: 3, Faults: fusioosim.Faults{
		Unavailable: 0.1, Concurrent: 0.1, GatewayTimeout: 0.1, TimeoutAfterApply: 0.1, ResetAfterApply: 0.1,
	}})
	cfg := fastConfig(t)
	cfg.IdempotentWrites = true
	tr := newTransport(t, cfg)
	var gatewayTimeouts, errs, ok int
	for i := 0; i < requests; i++ {
		res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: fmt.Sprintf("/v3/records/apps/dup%d", i), body: createBody(i)})
		switch {
		case res.err != nil:
			errs++
		case res.status == 504:
			gatewayTimeouts++
		case res.status == 200:
			ok++
		}
	}
	l := s.ledger()
	t.Logf("%d creates: %d ok, %d answered 504, %d reset; ledger %+v", requests, ok, gatewayTimeouts, errs, l.Injected)
	if l.Duplicates != 0 {
		t.Errorf("%d duplicate creates", l.Duplicates)
	}
	if gatewayTimeouts != l.Injected["504"]+l.Injected["504_after_apply"] || errs != l.Injected["reset_after_apply"] {
		t.Errorf("client saw %d 504s and %d resets; the simulator injected %v", gatewayTimeouts, errs, l.Injected)
	}
	if l.Creates != ok+l.Injected["504_after_apply"]+l.Injected["reset_after_apply"] {
		t.Errorf("%d creates applied, want %d", l.Creates, ok+l.Injected["504_after_apply"]+l.Injected["reset_after_apply"])
	}
}

// TestBudgetExhausted fails every attempt: retries stop at the budget's
// share of recent requests, the Observer hears it, and the upstream answer
// goes to the client.
func TestBudgetExhausted(t *testing.T) {
	t.Parallel()
	const requests = 100
	s := newSim(t, fusioosim.Config{Faults: fusioosim.Faults{Unavailable: 1}})
	obs := newCountObserver()
	fc := clockwork.NewFakeClock()
	tr := newTransport(t, defaultConfig(t, func(c *Config) {
		c.BaseDelay = 0
		c.BudgetRatio, c.BudgetMinRetries = 0.1, 0
		c.Clock, c.Observer = fc, obs
	}))
	for i := 0; i < requests; i++ {
		res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps"})
		if res.status != 503 || res.code != fusioo.CodeUnavailable {
			t.Fatalf("request %d: got %d/%d %v, want the upstream's 503/10004", i, res.status, res.code, res.err)
		}
	}
	l := s.ledger()
	retries := l.Requests - requests
	t.Logf("%d requests, %d retries, %d budget refusals", requests, retries, obs.exhaustedN())
	if retries > requests/10 || retries < requests/10-1 || retries != obs.total() {
		t.Errorf("%d retries (observer: %d), want about 10%% of %d", retries, obs.total(), requests)
	}
	if obs.exhaustedN() < requests-retries {
		t.Errorf("BudgetExhausted called %d times, want at least %d", obs.exhaustedN(), requests-retries)
	}

	// A window later the budget is back, the floor included.
	s.sim.Reset()
	tr2 := newTransport(t, defaultConfig(t, func(c *Config) {
		c.BaseDelay, c.BudgetRatio, c.BudgetMinRetries, c.Clock, c.MaxAttempts = 0, 0.1, 3, fc, 10
	}))
	roundTrip(t, tr2, s.srv.URL, call{method: "GET", path: "/v3/apps"})
	if n := s.ledger().Requests; n != 4 { // 1 + the floor of 3 (+ 0.1×1 retries)
		t.Errorf("with a floor of 3 retries: %d attempts, want 4", n)
	}
	fc.Advance(DefaultConfig().BudgetWindow)
	s.sim.Reset()
	roundTrip(t, tr2, s.srv.URL, call{method: "GET", path: "/v3/apps"})
	if n := s.ledger().Requests; n != 4 {
		t.Errorf("a window later: %d attempts, want 4", n)
	}
}

// TestBodyReplay sends binary bodies to an upstream that answers 503
// twice: every attempt carries the same bytes. Bodies too large to buffer
// are streamed once, whole, and not retried; the buffers all return.
func TestBodyReplay(t *testing.T) {
	t.Parallel()
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	rows := []struct {
		name        string
		size        int
		unknownLen  bool
		maxBody     int64 // 0: DefaultConfig's
		maxBuffers  int64 // 0: DefaultConfig's
		noBuffering bool  // MaxBodyBytes 0
		path        string
		wantRetries bool
	}{
		{name: "small", size: 37, path: "/v3/records/apps/app1", wantRetries: true},
		{name: "300KiB", size: 300 << 10, path: "/v3/records/apps/app1", wantRetries: true},
		{name: "300KiB unknown length", size: 300 << 10, unknownLen: true, path: "/v3/records/apps/app1", wantRetries: true},
		{name: "exactly max", size: 64 << 10, unknownLen: true, maxBody: 64 << 10, path: "/v3/records/apps/app1", wantRetries: true},
		{name: "over max", size: 2 << 20, path: "/v3/records/apps/app1"},
		{name: "over max unknown length", size: 200 << 10, unknownLen: true, maxBody: 64 << 10, path: "/v3/records/apps/app1"},
		{name: "one over max unknown length", size: 64<<10 + 1, unknownLen: true, maxBody: 64 << 10, path: "/v3/records/apps/app1"},
		{name: "over buffer budget", size: 32 << 10, maxBuffers: 16 << 10, path: "/v3/records/apps/app1"},
		{name: "over buffer budget unknown length", size: 32 << 10, unknownLen: true, maxBuffers: 16 << 10, path: "/v3/records/apps/app1"},
		{name: "upload", size: 10 << 10, path: "/v3/files/apps/app1/fields/f1"},
		{name: "buffering off", size: 100, noBuffering: true, path: "/v3/records/apps/app1"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			body := random(r.size)
			want := sha256.Sum256(body)
			s := newScript(t, scripted{status: 503, code: fusioo.CodeUnavailable}, scripted{status: 503, code: fusioo.CodeUnavailable}, scripted{status: 200})
			cfg := fastConfig(t)
			if r.maxBody != 0 {
				cfg.MaxBodyBytes = r.maxBody
			}
			if r.maxBuffers != 0 {
				cfg.MaxBufferBytes = r.maxBuffers
			}
			if r.noBuffering {
				cfg.MaxBodyBytes = 0
			}
			tr := newTransport(t, cfg)
			res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: r.path, body: body, unknownLen: r.unknownLen})
			n := s.requests()
			if r.wantRetries && (n != 3 || res.status != 200) {
				t.Fatalf("%d requests, answer %d; want 3 and 200", n, res.status)
			}
			if !r.wantRetries && (n != 1 || res.status != 503) {
				t.Fatalf("%d requests, answer %d; want 1 (streamed once) and 503", n, res.status)
			}
			for i := 0; i < n; i++ {
				if got := sha256.Sum256(s.body(i)); got != want {
					t.Fatalf("attempt %d carried %d bytes with another hash than the %d sent", i+1, len(s.body(i)), len(body))
				}
			}
			if u := tr.bufs.inUse.Load(); u != 0 {
				t.Fatalf("%d buffer bytes still held after the request", u)
			}
		})
	}
}

// TestBodyReplayConcurrent sends concurrent creates with random bodies of
// random sizes, 30% of the attempts answered 503: every attempt the
// upstream reads carries exactly its request's bytes, so no pooled buffer
// is reused while an attempt may still send it; the buffers are recycled.
func TestBodyReplayConcurrent(t *testing.T) {
	t.Parallel()
	var mismatches, attempts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		attempts.Add(1)
		if fmt.Sprintf("%x", sha256.Sum256(b)) != r.Header.Get("X-Sum") {
			mismatches.Add(1)
		}
		if mrand.Float64() < 0.3 {
			fusioo.WriteError(w, 503, fusioo.CodeUnavailable, "")
			return
		}
		fusioo.WriteSuccess(w, struct{}{})
	}))
	defer srv.Close()
	cfg := fastConfig(t)
	cfg.MaxAttempts = 20 // 0.3²⁰: no request fails by chance
	tr := newTransport(t, cfg)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				size := 1 + (w*7919+i*104729)%(40<<10)
				b := make([]byte, size)
				_, _ = rand.Read(b)
				h, attempts := recordHooks(nil)
				res := roundTrip(t, tr, srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: b, hooks: h,
					header: map[string]string{"X-Sum": fmt.Sprintf("%x", sha256.Sum256(b))}})
				if res.status != 200 {
					t.Errorf("got %d %v after %+v", res.status, res.err, attempts())
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d attempts, %d buffers made, %d recycled", attempts.Load(), tr.bufs.allocs.Load(), tr.bufs.recycled.Load())
	if mismatches.Load() != 0 {
		t.Fatalf("%d attempts carried other bytes than their request's", mismatches.Load())
	}
	if u := tr.bufs.inUse.Load(); u != 0 {
		t.Fatalf("%d buffer bytes still reserved", u)
	}
	// Every buffer went back to the pool: no attempt kept one (how many
	// were made depends on the garbage collector, which empties pools).
	if r := tr.bufs.recycled.Load(); r != 400 {
		t.Errorf("%d buffers recycled for 400 requests", r)
	}
}

// TestBufPoolBound checks that buffers in use never exceed MaxBufferBytes
// and that released ones are reused.
func TestBufPoolBound(t *testing.T) {
	t.Parallel()
	p := newBufPool(1<<20, 1<<20)
	var held []*buffer
	for {
		b := p.get("k", 100<<10) // a 128 KiB class
		if b == nil {
			break
		}
		held = append(held, b)
	}
	if len(held) != 8 || p.inUse.Load() != 1<<20 {
		t.Fatalf("%d buffers, %d bytes in use; want 8 and 1 MiB", len(held), p.inUse.Load())
	}
	if p.get("k", 1) != nil {
		t.Fatal("got a buffer past the bound")
	}
	for _, b := range held {
		b.release()
	}
	if p.inUse.Load() != 0 {
		t.Fatalf("%d bytes in use after release", p.inUse.Load())
	}
	if p.get("k", 2<<20) != nil {
		t.Fatal("got a buffer above MaxBodyBytes")
	}
}

// TestBufPoolShareOfAKey: one key holds at most its share of the buffers
// (an eighth of MaxBufferBytes, at least one body), so another key's
// retries still get theirs.
func TestBufPoolShareOfAKey(t *testing.T) {
	t.Parallel()
	p := newBufPool(1<<20, 16<<20) // a share of 2 MiB
	n := 0
	for p.get("slow", 100<<10) != nil {
		n++
	}
	if n != 16 || p.inUse.Load() != 2<<20 {
		t.Fatalf("one key got %d buffers, %d bytes; want 16 and 2 MiB", n, p.inUse.Load())
	}
	shard := func(k string) uint64 { return maphash.String(p.seed, k) % uint64(len(p.shares)) }
	other := "other"
	for i := 0; shard(other) == shard("slow"); i++ {
		other = fmt.Sprintf("other-%d", i)
	}
	if p.get(other, 100<<10) == nil {
		t.Fatal("another key got no buffer while one key held its share")
	}
}

// TestClientDisconnectDuringBackoff cancels the client's context while a
// retry waits its backoff: RoundTrip returns the last answer at once, with
// no timer or goroutine left.
func TestClientDisconnectDuringBackoff(t *testing.T) {
	s := newScript(t, scripted{status: 503, code: fusioo.CodeUnavailable})
	base := NewBaseTransport(DefaultBaseOptions())
	fc := clockwork.NewFakeClock()
	tr := newTransport(t, defaultConfig(t, func(c *Config) {
		c.Clock, c.BaseDelay, c.MaxDelay, c.Rand = fc, time.Hour, time.Hour, func() float64 { return 0.5 }
	}), base)
	ignore := goleak.IgnoreCurrent()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() {
		done <- roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps", ctx: ctx})
	}()
	blockUntil(t, fc, 1) // the backoff timer
	cancel()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RoundTrip did not return after the client left")
	}
	if res.status != 503 || s.requests() != 1 {
		t.Fatalf("got %d %v after %d requests; want the 503 after 1", res.status, res.err, s.requests())
	}
	base.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// TestRetryAfter checks that an upstream Retry-After is honored when it
// fits before the deadline, and answered to the client at once, header
// included, when it does not.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	unavailable := func(ra string) scripted {
		return scripted{status: 503, code: fusioo.CodeUnavailable, retryAfter: ra}
	}
	t.Run("longer than the deadline", func(t *testing.T) {
		t.Parallel()
		for _, ra := range []string{"30", "86400", "99999999999999999999", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)} {
			s := newScript(t, unavailable(ra), scripted{status: 200})
			fc := clockwork.NewFakeClockAt(time.Now())
			tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock = fc }))
			h, attempts := recordHooks(nil)
			h.Deadline = fc.Now().Add(5 * time.Second)
			res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps", hooks: h})
			if res.status != 503 || res.header.Get("Retry-After") != ra || s.requests() != 1 {
				t.Fatalf("Retry-After %s: got %d (Retry-After %q) after %d requests", ra, res.status, res.header.Get("Retry-After"), s.requests())
			}
			if as := attempts(); len(as) != 1 || !as[0].Final || as[0].RetryAfter < 5*time.Second {
				t.Fatalf("attempts %+v", as)
			}
		}
	})
	t.Run("no deadline, longer than MaxDelay", func(t *testing.T) {
		t.Parallel()
		s := newScript(t, unavailable("30"), scripted{status: 200})
		tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock = clockwork.NewFakeClock() }))
		if res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps"}); res.status != 503 || s.requests() != 1 {
			t.Fatalf("got %d after %d requests", res.status, s.requests())
		}
	})
	t.Run("fits", func(t *testing.T) {
		t.Parallel()
		s := newScript(t, unavailable("2"), scripted{status: 200})
		fc := clockwork.NewFakeClock()
		tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock, c.Rand = fc, func() float64 { return 0.99 } }))
		h, _ := recordHooks(nil)
		h.Deadline = fc.Now().Add(5 * time.Second)
		done := make(chan result, 1)
		go func() {
			done <- roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1), hooks: h})
		}()
		blockUntil(t, fc, 1)
		fc.Advance(2*time.Second - time.Nanosecond)
		select {
		case res := <-done:
			t.Fatalf("returned %d before the Retry-After passed", res.status)
		default:
		}
		fc.Advance(time.Nanosecond)
		if res := <-done; res.status != 200 || s.requests() != 2 {
			t.Fatalf("got %d after %d requests, want 200 after 2", res.status, s.requests())
		}
	})
	t.Run("date in the past", func(t *testing.T) {
		t.Parallel()
		s := newScript(t, unavailable("Sun, 06 Nov 1994 08:49:37 GMT"), scripted{status: 200})
		tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock = clockwork.NewFakeClock() }))
		if res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps"}); res.status != 200 || s.requests() != 2 {
			t.Fatalf("got %d after %d requests, want 200 after 2", res.status, s.requests())
		}
	})
	t.Run("simulator 20005", func(t *testing.T) {
		t.Parallel()
		s := newSim(t, fusioosim.Config{Limit: 1, RetryAfter: true})
		fc := clockwork.NewFakeClock()
		tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock = fc }))
		roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps"})
		h, _ := recordHooks(func(context.Context, time.Time) (bool, error) { t.Error("Admit called"); return true, nil })
		h.Deadline = fc.Now().Add(time.Minute)
		res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps", hooks: h})
		if res.status != 429 || res.header.Get("Retry-After") == "" || s.ledger().Requests != 2 {
			t.Fatalf("got %d (Retry-After %q) after %d requests", res.status, res.header.Get("Retry-After"), s.ledger().Requests)
		}
	})
}

// TestAnswered checks the attempts the hooks hear, in order, with what
// each one learned.
func TestAnswered(t *testing.T) {
	t.Parallel()
	s := newScript(t,
		scripted{status: 503, code: fusioo.CodeUnavailable, retryAfter: "0"},
		scripted{status: 400, code: fusioo.CodeConcurrentRequests},
		scripted{status: 429, code: fusioo.CodeRateLimited},
		scripted{status: 200})
	tr := newTransport(t, fastConfig(t))
	h, attempts := recordHooks(nil)
	res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1), hooks: h})
	if res.status != 200 {
		t.Fatalf("got %d", res.status)
	}
	want := []Seen{
		{Attempt: Attempt{N: 1, Status: 503, Code: fusioo.CodeUnavailable, Written: true, Reason: ReasonUnavailable, RetryAfter: 0, raOK: true}},
		{Attempt: Attempt{N: 2, Status: 400, Code: fusioo.CodeConcurrentRequests, Written: true, Reason: ReasonConcurrent}},
		{Attempt: Attempt{N: 3, Status: 429, Code: fusioo.CodeRateLimited, Written: true, Reason: ReasonRateLimited}},
		{Attempt: Attempt{N: 4, Status: 200, Written: true}, Final: true},
	}
	got := attempts()
	if len(got) != len(want) {
		t.Fatalf("attempts %+v", got)
	}
	for i := range want {
		got[i].Duration = 0
		if got[i] != want[i] {
			t.Errorf("attempt %d: %+v, want %+v", i+1, got[i], want[i])
		}
	}
}

// TestSerializeCreates30054 sends concurrent creates to one App whose
// creates hold its lock: after the first 30054, creates of that key to
// that App go one at a time, so 30054s stop instead of repeating.
func TestSerializeCreates30054(t *testing.T) {
	const n = 12
	run := func(t *testing.T, cooldown time.Duration) (fusioosim.Ledger, int) {
		s := newSim(t, fusioosim.Config{Faults: fusioosim.Faults{CreateHold: 20 * time.Millisecond}})
		tr := newTransport(t, defaultConfig(t, func(c *Config) {
			c.ConcurrentDelay, c.BudgetWindow, c.SerializeCooldown = 20*time.Millisecond, 0, cooldown
		}))
		var failed atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				h := &Hooks{Key: "key-1", Deadline: time.Now().Add(20 * time.Second)}
				res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(i), hooks: h})
				if res.status != 200 {
					failed.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		return s.ledger(), int(failed.Load())
	}
	off, offFailed := run(t, -1)
	on, onFailed := run(t, time.Minute)
	t.Logf("%d concurrent creates: 30054s %d (%d failed) serialized, %d (%d failed) not", n, on.Concurrent30054, onFailed, off.Concurrent30054, offFailed)
	if onFailed != 0 || on.Creates != n || on.Duplicates != 0 {
		t.Errorf("serialized: %d failed, %d creates, %d duplicates", onFailed, on.Creates, on.Duplicates)
	}
	// The first wave races (n-1 lose). Then one create at a time probes
	// the lock, backing off while the first wave's winner holds it (20 ms:
	// a few probes), and none meets a 30054 after that.
	if on.Concurrent30054 > n-1+5 {
		t.Errorf("serialized: %d 30054s, want at most %d", on.Concurrent30054, n-1+5)
	}
	if on.Concurrent30054 >= off.Concurrent30054 {
		t.Errorf("serialization did not reduce 30054s: %d vs %d", on.Concurrent30054, off.Concurrent30054)
	}
}

// TestSerializeLaneDeadline checks that waiting for a (key, App) turn ends
// at the deadline: the client gets the 30054 it had.
func TestSerializeLaneDeadline(t *testing.T) {
	t.Parallel()
	fc := clockwork.NewFakeClock()
	s := newScript(t, scripted{status: 400, code: fusioo.CodeConcurrentRequests}, scripted{status: 200})
	tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock, c.ConcurrentDelay = fc, 0 }))
	// Someone holds the lane.
	tr.serial.mark("key-1", "app1")
	release, held, ok := tr.serial.acquire(context.Background(), "key-1", "app1", time.Time{})
	if !ok || !held {
		t.Fatal("no turn")
	}
	defer release()
	h, attempts := recordHooks(nil)
	h.Deadline = fc.Now().Add(time.Second)
	done := make(chan result, 1)
	go func() {
		done <- roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1), hooks: h})
	}()
	blockUntil(t, fc, 1) // the first attempt waits for its turn
	fc.Advance(time.Second)
	res := <-done
	// The first attempt is sent anyway once the deadline passed (an
	// honest answer beats none); its 30054 retry cannot get a turn.
	if res.status != 400 || res.code != fusioo.CodeConcurrentRequests || s.requests() != 1 || len(attempts()) != 1 {
		t.Fatalf("got %d/%d after %d requests", res.status, res.code, s.requests())
	}
}

// TestSerializeTurnDeadline checks a retry whose (key, App) turn does not
// come before the deadline: the client gets the 30054 it had, intact.
func TestSerializeTurnDeadline(t *testing.T) {
	t.Parallel()
	fc := clockwork.NewFakeClock()
	var tr *Transport
	var release func()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Another create of the pair takes the turn meanwhile.
		tr.serial.mark("key-1", "app1")
		release, _, _ = tr.serial.acquire(context.Background(), "key-1", "app1", time.Time{})
		fusioo.WriteError(w, 400, fusioo.CodeConcurrentRequests, "")
	}))
	defer srv.Close()
	tr = newTransport(t, defaultConfig(t, func(c *Config) { c.Clock, c.ConcurrentDelay = fc, 0 }))
	h, attempts := recordHooks(nil)
	h.Deadline = fc.Now().Add(time.Second)
	done := make(chan result, 1)
	go func() {
		done <- roundTrip(t, tr, srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1), hooks: h})
	}()
	blockUntil(t, fc, 1) // the retry waits for its turn
	fc.Advance(time.Second)
	res := <-done
	release()
	if res.status != 400 || res.code != fusioo.CodeConcurrentRequests {
		t.Fatalf("got %d/%d %v, want the 30054 intact", res.status, res.code, res.err)
	}
	if as := attempts(); len(as) != 1 || as[0].Final {
		t.Fatalf("attempts %+v", as)
	}
}

// TestAppOf checks the App id extraction of serialized creates.
func TestAppOf(t *testing.T) {
	t.Parallel()
	tr := newTransport(t, defaultConfig(t, nil), http.DefaultTransport)
	for _, c := range []struct{ method, path, app string }{
		{"POST", "/v3/records/apps/A1", "A1"},
		{"POST", "/records/apps/A1/", "A1"},
		{"POST", "/v1/files/apps/A2/fields/f9", "A2"},
		{"POST", "/v3/records/apps/A1/filter", ""},
		{"GET", "/v3/records/apps/A1", ""},
		{"POST", "/v3/records/r1/discussions", ""},
		{"POST", "/v3/webhooks", ""},
		{"POST", "/v3/unknown/apps/A1", ""},
	} {
		if got := appOf(tr.routes.Match(c.method, c.path), c.path); got != c.app {
			t.Errorf("%s %s: app %q, want %q", c.method, c.path, got, c.app)
		}
	}
}

// TestGzipErrorBody checks that a gzip-encoded error body is classified by
// its code and, when final, reaches the client byte for byte.
func TestGzipErrorBody(t *testing.T) {
	t.Parallel()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(fusioo.ErrorBody(fusioo.CodeConcurrentRequests, ""))
	zw.Close()
	gz := scripted{status: 400, body: zb.Bytes(), header: map[string]string{"Content-Encoding": "gzip", "Content-Type": "application/json"}}

	s := newScript(t, gz, scripted{status: 200})
	tr := newTransport(t, fastConfig(t))
	if res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1)}); res.status != 200 || s.requests() != 2 {
		t.Fatalf("got %d after %d requests, want 200 after 2", res.status, s.requests())
	}

	s = newScript(t, gz)
	cfg := fastConfig(t)
	cfg.MaxAttempts = 2
	tr = newTransport(t, cfg)
	res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1)})
	if res.status != 400 || !bytes.Equal(res.body, zb.Bytes()) || s.requests() != 2 {
		t.Fatalf("got %d, %d bytes after %d requests", res.status, len(res.body), s.requests())
	}
}

// stubBase answers every attempt with the response its function makes.
type stubBase func(*http.Request) (*http.Response, error)

func (f stubBase) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return f(r)
}

type trackedBody struct {
	io.Reader
	closed bool
}

func (b *trackedBody) Close() error { b.closed = true; return nil }

// TestFinalBodyRestored checks that a final error answer whose body was
// read for its code reaches the client exactly, however long, and that
// closing it closes the upstream body; and that a retried answer's body is
// closed.
func TestFinalBodyRestored(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, 10, fusioo.MaxErrorBody - 1, fusioo.MaxErrorBody, fusioo.MaxErrorBody + 1, 100 << 10} {
		payload := bytes.Repeat([]byte("<html>"), size/6+1)[:size]
		var bodies []*trackedBody
		stub := stubBase(func(r *http.Request) (*http.Response, error) {
			b := &trackedBody{Reader: bytes.NewReader(payload)}
			bodies = append(bodies, b)
			return &http.Response{StatusCode: 503, Header: http.Header{}, Body: b, Request: r}, nil
		})
		cfg := fastConfig(t)
		cfg.MaxAttempts = 2
		tr := newTransport(t, cfg, stub)
		res := roundTrip(t, tr, "http://fusioo.invalid", call{method: "GET", path: "/v3/apps"})
		if res.status != 503 || !bytes.Equal(res.body, payload) {
			t.Fatalf("size %d: got %d and %d bytes", size, res.status, len(res.body))
		}
		if len(bodies) != 2 || !bodies[0].closed || !bodies[1].closed {
			t.Fatalf("size %d: upstream bodies not closed", size)
		}
	}
}

// TestReverseProxy runs the Transport under httputil.ReverseProxy, as the
// gateway does, against a simulator failing a third of the attempts.
func TestReverseProxy(t *testing.T) {
	t.Parallel()
	s := newSim(t, fusioosim.Config{Seed: 7, Faults: fusioosim.Faults{Unavailable: 0.3}})
	u, _ := url.Parse(s.srv.URL)
	tr := newTransport(t, defaultConfig(t, func(c *Config) {
		c.BaseDelay, c.ConcurrentDelay, c.MaxAttempts, c.BudgetWindow = 0, 0, 10, 0
	}))
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: tr,
	}
	front := httptest.NewServer(proxy)
	defer front.Close()
	client := front.Client()
	defer client.CloseIdleConnections()

	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, front.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for i := 0; i < 20; i++ {
		if st, b := do("POST", "/v3/records/apps/app1", string(createBody(i))); st != 200 {
			t.Fatalf("create %d: %d %s", i, st, b)
		}
	}
	if st, b := do("POST", "/v3/records/apps/app1/count/filter", ""); st != 200 || !strings.Contains(b, `"count":20`) {
		t.Fatalf("count: %d %s", st, b)
	}
	l := s.ledger()
	if l.Creates != 20 || l.Duplicates != 0 || int64(l.Requests) != tr.attempts.Load() || tr.writes.Load() != tr.attempts.Load() {
		t.Fatalf("creates %d, duplicates %d, requests %d, attempts %d, writes %d", l.Creates, l.Duplicates, l.Requests, tr.attempts.Load(), tr.writes.Load())
	}
}

// TestHTTP2 runs the basic cases over HTTP/2, as a TLS upstream offers:
// bodiless and buffered requests retried, each attempt counted once.
func TestHTTP2(t *testing.T) {
	t.Parallel()
	body := createBody(1)
	for _, c := range []call{
		{method: "GET", path: "/v3/apps"},
		{method: "POST", path: "/v3/records/apps/app1/filter", body: body},
		{method: "DELETE", path: "/v3/records/r1", header: map[string]string{"Idempotency-Key": "k"}},
	} {
		s := &script{answers: []scripted{{status: 503, code: fusioo.CodeUnavailable}, {status: 504}, {status: 200}}}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
		srv.EnableHTTP2 = true
		srv.StartTLS()
		cfg := fastConfig(t)
		cfg.IdempotentWrites = true
		o := DefaultBaseOptions()
		o.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		tr := newTransport(t, cfg, newBase(t, o))
		res := roundTrip(t, tr, srv.URL, c)
		srv.Close()
		if res.status != 200 || s.requests() != 3 || tr.attempts.Load() != 3 || tr.writes.Load() != 3 {
			t.Fatalf("%s: got %d %v after %d requests, %d attempts, %d writes", c.method, res.status, res.err, s.requests(), tr.attempts.Load(), tr.writes.Load())
		}
		for i := 0; i < 3; i++ {
			if s.protos[i] != "HTTP/2.0" || (len(c.body) > 0 && !bytes.Equal(s.body(i), c.body)) {
				t.Fatalf("%s: attempt %d over %s with %d bytes", c.method, i+1, s.protos[i], len(s.body(i)))
			}
		}
	}
}
