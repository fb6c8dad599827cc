package limiter

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type countingObserver struct {
	mu       sync.Mutex
	depth    int
	maxDepth int
	rejected map[string]int
	waits    int
}

func (o *countingObserver) QueueDepth(d int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.depth += d
	o.maxDepth = max(o.maxDepth, o.depth)
}
func (o *countingObserver) QueueWait(time.Duration) { o.mu.Lock(); o.waits++; o.mu.Unlock() }
func (o *countingObserver) Rejected(r string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.rejected == nil {
		o.rejected = map[string]int{}
	}
	o.rejected[r]++
}

func newTestLimiter(clk clockwork.Clock, p Policy, mod func(*Config)) (*Limiter, *MemoryStore, *countingObserver) {
	s := NewMemoryStore(p, clk)
	obs := &countingObserver{}
	cfg := Config{Store: s, Clock: clk, MaxWait: time.Minute, MaxDepth: 10, MaxQueued: 100, Observer: obs}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg), s, obs
}

type outcome struct {
	i   int
	d   Decision
	err error
}

// TestQueueFIFO queues requests behind a full quota and checks they are
// admitted one per freed slot, in arrival order.
func TestQueueFIFO(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, obs := newTestLimiter(clk, Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, nil)
	ctx := context.Background()
	if d, err := l.Admit(ctx, "k", time.Time{}); err != nil || !d.Allowed {
		t.Fatalf("first: %+v %v", d, err)
	}
	const n = 4
	out := make(chan outcome, n)
	for i := range n {
		go func() {
			d, err := l.Admit(ctx, "k", time.Time{})
			out <- outcome{i, d, err}
		}()
		// Wait until this one is queued: each waiter holds one deadline
		// timer, and the head one more for its slot.
		waitQueued(t, l, i+1)
	}
	for want := range n {
		// The head sleeps until the oldest bucket frees: advance to it.
		if err := clk.BlockUntilContext(ctxT(t), n-want+1); err != nil {
			t.Fatal(err)
		}
		clk.Advance(11 * time.Second)
		o := <-out
		if o.err != nil || !o.d.Allowed || o.i != want {
			t.Fatalf("admission %d: got request %d %+v %v", want, o.i, o.d, o.err)
		}
	}
	if obs.depth != 0 || obs.maxDepth != n || obs.waits != n {
		t.Fatalf("observer: %+v", obs)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func waitQueued(t *testing.T, l *Limiter, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.Queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("queue never reached %d (at %d)", n, l.Queued())
		}
		time.Sleep(time.Millisecond) // polling an observable condition, not waiting "enough"
	}
}

func TestMaxWaitRejectsAtOnceWithRetryAfter(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, obs := newTestLimiter(clk, Policy{Limit: 2, Window: time.Hour, Buckets: 60}, func(c *Config) { c.MaxWait = 5 * time.Second })
	ctx := context.Background()
	for range 2 {
		l.Admit(ctx, "k", time.Time{})
	}
	clk.Advance(90 * time.Second)
	d, err := l.Admit(ctx, "k", time.Time{})
	if err != nil || d.Allowed || d.Reason != ReasonQuota {
		t.Fatalf("%+v %v", d, err)
	}
	// Both slots were taken in the first minute bucket: they free at 1m+1h.
	if want := time.Hour + time.Minute - 90*time.Second; d.RetryAfter != want {
		t.Fatalf("RetryAfter %s, want %s", d.RetryAfter, want)
	}
	if d.Waited != 0 || l.Queued() != 0 || obs.rejected[ReasonQuota] != 1 {
		t.Fatalf("waited %s queued %d obs %+v", d.Waited, l.Queued(), obs.rejected)
	}
	// A different key is not affected.
	if d, _ := l.Admit(ctx, "other", time.Time{}); !d.Allowed {
		t.Fatalf("other key: %+v", d)
	}
}

// TestDisconnectWhileQueued cancels a queued request: it leaves at once,
// consumes no quota, and the request behind it moves up.
func TestDisconnectWhileQueued(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, s, _ := newTestLimiter(clk, Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, nil)
	bg := context.Background()
	l.Admit(bg, "k", time.Time{})
	ctx, cancel := context.WithCancel(bg)
	out := make(chan outcome, 2)
	go func() { d, err := l.Admit(ctx, "k", time.Time{}); out <- outcome{0, d, err} }()
	waitQueued(t, l, 1)
	go func() { d, err := l.Admit(bg, "k", time.Time{}); out <- outcome{1, d, err} }()
	waitQueued(t, l, 2)
	cancel()
	o := <-out
	if o.i != 0 || !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled request: %+v", o)
	}
	waitQueued(t, l, 1)
	if err := clk.BlockUntilContext(ctxT(t), 2); err != nil { // new head: deadline + slot timers
		t.Fatal(err)
	}
	clk.Advance(11 * time.Second)
	o = <-out
	if o.i != 1 || !o.d.Allowed {
		t.Fatalf("second request: %+v", o)
	}
	// Only the first and the second request were counted.
	res, _ := s.Take(bg, "k", Take{Ahead: 1})
	if res.Remaining != 0 {
		t.Fatalf("remaining %d", res.Remaining)
	}
	if c := s.Counted()["k"]; len(c) != 1 || c[0].Count != 1 {
		t.Fatalf("counted %+v", c)
	}
}

func TestQueueFullAndGlobalCap(t *testing.T) {
	for _, tc := range []struct {
		name      string
		depth, qd int
	}{{"per key", 2, 100}, {"global", 100, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clockwork.NewFakeClockAt(epoch)
			l, _, obs := newTestLimiter(clk, Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
				c.MaxDepth, c.MaxQueued = tc.depth, tc.qd
			})
			ctx, cancel := context.WithCancel(context.Background())
			l.Admit(ctx, "k", time.Time{})
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() { l.Admit(ctx, "k", time.Time{}) })
				waitQueued(t, l, i+1)
			}
			d, err := l.Admit(ctx, "k", time.Time{})
			if err != nil || d.Allowed || d.Reason != ReasonQueueFull || d.RetryAfter != 31*time.Second {
				t.Fatalf("%+v %v", d, err)
			}
			if obs.rejected[ReasonQueueFull] != 1 {
				t.Fatalf("obs %+v", obs.rejected)
			}
			cancel()
			wg.Wait()
		})
	}
}

func TestBlockedKeyWaitsOrRejects(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, _ := newTestLimiter(clk, Policy{Limit: 100, Window: time.Hour}, func(c *Config) { c.MaxWait = 10 * time.Second })
	ctx := context.Background()
	if err := l.Exhaust(ctx, "k", time.Hour); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Admit(ctx, "k", time.Time{})
	if d.Allowed || d.Reason != ReasonBlocked || d.RetryAfter != time.Hour {
		t.Fatalf("blocked for an hour: %+v", d)
	}
	l.Exhaust(ctx, "j", 3*time.Second)
	out := make(chan outcome, 1)
	go func() { d, err := l.Admit(ctx, "j", time.Time{}); out <- outcome{0, d, err} }()
	waitQueued(t, l, 1)
	clk.BlockUntilContext(ctxT(t), 2)
	clk.Advance(3 * time.Second)
	if o := <-out; !o.d.Allowed || o.d.Waited != 3*time.Second {
		t.Fatalf("after pause: %+v", o)
	}
}

func TestSmoothingAndAnonymous(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, obs := newTestLimiter(clk, Policy{Limit: 1000, Window: time.Hour}, func(c *Config) {
		c.Rate, c.Burst = 1, 2
		c.AnonymousRate, c.AnonymousBurst = 1, 1
		c.MaxWait = 1500 * time.Millisecond
	})
	ctx := context.Background()
	for range 2 {
		if d, _ := l.Admit(ctx, "k", time.Time{}); !d.Allowed || d.Waited != 0 {
			t.Fatalf("burst: %+v", d)
		}
	}
	out := make(chan outcome, 1)
	go func() { d, err := l.Admit(ctx, "k", time.Time{}); out <- outcome{0, d, err} }()
	clk.BlockUntilContext(ctxT(t), 1)
	clk.Advance(time.Second)
	if o := <-out; !o.d.Allowed || o.d.Waited != time.Second {
		t.Fatalf("smoothed: %+v", o)
	}
	// Two more at once: the second would wait 2 s > max_wait.
	go func() { d, err := l.Admit(ctx, "k", time.Time{}); out <- outcome{0, d, err} }()
	clk.BlockUntilContext(ctxT(t), 1)
	d, _ := l.Admit(ctx, "k", time.Time{})
	if d.Allowed || d.Reason != ReasonSmoothing || d.RetryAfter != 2*time.Second {
		t.Fatalf("over smoothing: %+v", d)
	}
	clk.Advance(time.Second)
	<-out
	// Anonymous: no quota, own limit of 1/s burst 1.
	if d, _ := l.Admit(ctx, "", time.Time{}); !d.Allowed || d.Limit != 0 {
		t.Fatalf("anonymous: %+v", d)
	}
	go func() { d, err := l.Admit(ctx, "", time.Time{}); out <- outcome{0, d, err} }()
	clk.BlockUntilContext(ctxT(t), 1)
	clk.Advance(time.Second)
	if o := <-out; !o.d.Allowed {
		t.Fatalf("anonymous smoothed: %+v", o)
	}
	if obs.rejected[ReasonSmoothing] != 1 {
		t.Fatalf("obs %+v", obs.rejected)
	}
	_ = rate.Inf
}

func TestCloseWakesWaiters(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, _ := newTestLimiter(clk, Policy{Limit: 1, Window: 10 * time.Second}, nil)
	ctx := context.Background()
	l.Admit(ctx, "k", time.Time{})
	out := make(chan outcome, 2)
	for i := range 2 {
		go func() { d, err := l.Admit(ctx, "k", time.Time{}); out <- outcome{i, d, err} }()
		waitQueued(t, l, i+1)
	}
	l.Close()
	for range 2 {
		if o := <-out; !errors.Is(o.err, ErrClosed) {
			t.Fatalf("%+v", o)
		}
	}
	if l.Queued() != 0 {
		t.Fatalf("queued %d", l.Queued())
	}
}

func TestSweepKeepsBusyKeys(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, _ := newTestLimiter(clk, Policy{Limit: 10, Window: time.Minute}, func(c *Config) { c.IdleAfter = time.Minute })
	ctx := context.Background()
	l.Admit(ctx, "a", time.Time{})
	l.Admit(ctx, "b", time.Time{})
	clk.Advance(30 * time.Second)
	l.Admit(ctx, "b", time.Time{})
	clk.Advance(31 * time.Second)
	if n := l.Sweep(); n != 1 {
		t.Fatalf("%d keys left, want 1", n)
	}
}
