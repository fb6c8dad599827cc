package limiter

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
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

func (o *countingObserver) rejections(r string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rejected[r]
}

// newTestLimiter is a limiter over a quota.MemoryStore on clk (nil: the real
// clock, which is the bubble's fake clock inside synctest.Test).
func newTestLimiter(clk clockwork.Clock, p quota.Policy, mod func(*Config)) (*Limiter, *quota.MemoryStore, *countingObserver) {
	s := quota.NewMemoryStore(p, clk)
	obs := &countingObserver{}
	cfg := DefaultConfig()
	cfg.Store, cfg.Clock, cfg.MaxWait, cfg.MaxDepth, cfg.MaxQueued, cfg.Observer = s, clk, time.Minute, 10, 100, obs
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg), s, obs
}

// epoch2000 is where synctest's clock starts.
var epoch2000 = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

type outcome struct {
	i   int
	d   Decision
	err error
}

// admitAsync starts Admit in its own goroutine, lets it reach its wait
// (synctest.Wait: every goroutine of the bubble blocked) and returns where
// its outcome will arrive.
func admitAsync(ctx context.Context, l *Limiter, key string, i int, out chan<- outcome) {
	go func() {
		d, err := l.Admit(ctx, key, time.Time{})
		out <- outcome{i, d, err}
	}()
	synctest.Wait()
}

// TestQueueFIFO queues requests behind a full quota: each reserves the next
// slot at once, and they are admitted one per freed slot, in arrival order,
// exactly when it frees.
func TestQueueFIFO(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, obs := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, nil) // 1 s buckets
		ctx := context.Background()
		if d, err := l.Admit(ctx, "k", time.Time{}); err != nil || !d.Allowed {
			t.Fatalf("first: %+v %v", d, err)
		}
		const n = 4
		out := make(chan outcome, n)
		for i := range n {
			admitAsync(ctx, l, "k", i, out)
		}
		if l.Queued() != n {
			t.Fatalf("queued %d, want %d", l.Queued(), n)
		}
		// A slot counted in the bucket [b, b+1s) frees at b+1s+10s: the
		// first at 11 s, each next one 11 s after the one before.
		for want := range n {
			o := <-out
			if o.err != nil || !o.d.Allowed || o.i != want || o.d.Waited != time.Duration(want+1)*11*time.Second {
				t.Fatalf("admission %d: got request %d waited %s, %+v %v", want, o.i, o.d.Waited, o.d, o.err)
			}
		}
		if obs.depth != 0 || obs.maxDepth != n || obs.waits != n {
			t.Fatalf("observer: %+v", obs)
		}
	})
}

func TestMaxWaitRejectsAtOnceWithRetryAfter(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(epoch)
	l, _, obs := newTestLimiter(clk, quota.Policy{Limit: 2, Window: time.Hour, Buckets: 60}, func(c *Config) { c.MaxWait = 5 * time.Second })
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

// TestRetryAfterCountsWaiters: a refusal's Retry-After is the first slot
// nobody has reserved, not the first slot that frees.
func TestRetryAfterCountsWaiters(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) { c.MaxWait = 15 * time.Second })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		l.Admit(ctx, "k", time.Time{})
		out := make(chan outcome, 1)
		admitAsync(ctx, l, "k", 0, out) // holds the slot freeing at 11 s
		d, err := l.Admit(ctx, "k", time.Time{})
		if err != nil || d.Allowed || d.RetryAfter != 22*time.Second || d.Waited != 0 {
			t.Fatalf("second waiter: %+v %v, want refused at once, retry after 22s", d, err)
		}
		cancel()
		<-out
	})
}

// TestDisconnectWhileQueued cancels a queued request: it leaves at once,
// its slot is given back (the quota is not spent by it), and the request
// behind it moves up into its slot.
func TestDisconnectWhileQueued(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, s, obs := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, nil)
		bg := context.Background()
		l.Admit(bg, "k", time.Time{})
		ctx, cancel := context.WithCancel(bg)
		out := make(chan outcome, 3)
		admitAsync(ctx, l, "k", 0, out) // slot at 11 s
		admitAsync(bg, l, "k", 1, out)  // slot at 22 s
		admitAsync(bg, l, "k", 2, out)  // slot at 33 s
		cancel()
		o := <-out
		if o.i != 0 || !errors.Is(o.err, context.Canceled) {
			t.Fatalf("cancelled request: %+v", o)
		}
		synctest.Wait()
		if l.Queued() != 2 {
			t.Fatalf("queued %d, want 2", l.Queued())
		}
		o = <-out
		if o.i != 1 || !o.d.Allowed || o.d.Waited != 11*time.Second {
			t.Fatalf("request 1: %+v, want admitted after 11s", o)
		}
		// Counted: the two waiters' slots (11 s and 22 s); the slot given
		// back (33 s) is reserved by nobody.
		if c := s.Counted()["k"]; len(c) != 2 || !c[0].Start.Equal(epoch2000.Add(11*time.Second)) || !c[1].Start.Equal(epoch2000.Add(22*time.Second)) {
			t.Fatalf("counted %+v, want the two waiters' slots", c)
		}
		o = <-out
		if o.i != 2 || !o.d.Allowed || o.d.Waited != 22*time.Second {
			t.Fatalf("request 2: %+v, want admitted after 22s", o)
		}
		if obs.depth != 0 || obs.waits != 3 {
			t.Fatalf("observer %+v", obs)
		}
	})
}

func TestQueueFullAndGlobalCap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		depth, qd int
	}{{"per key", 2, 100}, {"global", 100, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l, _, obs := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
					c.MaxDepth, c.MaxQueued = tc.depth, tc.qd
				})
				ctx, cancel := context.WithCancel(context.Background())
				l.Admit(ctx, "k", time.Time{})
				out := make(chan outcome, 2)
				for i := range 2 {
					admitAsync(ctx, l, "k", i, out)
				}
				// The two waiters hold the slots freeing at 11 and 22 s; the
				// next frees at 33 s, within max_wait, but there is no room
				// to wait for it.
				d, err := l.Admit(ctx, "k", time.Time{})
				if err != nil || d.Allowed || d.Reason != ReasonQueueFull || d.RetryAfter != 33*time.Second {
					t.Fatalf("%+v %v", d, err)
				}
				if obs.rejections(ReasonQueueFull) != 1 {
					t.Fatalf("obs %+v", obs.rejected)
				}
				cancel()
				<-out
				<-out
			})
		})
	}
}

func TestBlockedKeyWaitsOrRejects(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 100, Window: time.Hour, Buckets: quota.DefaultBuckets}, func(c *Config) { c.MaxWait = 10 * time.Second })
		ctx := context.Background()
		if err := l.Exhaust(ctx, "k", time.Hour); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Admit(ctx, "k", time.Time{})
		if d.Allowed || d.Reason != ReasonBlocked || d.RetryAfter != time.Hour {
			t.Fatalf("blocked for an hour: %+v", d)
		}
		l.Exhaust(ctx, "j", 3*time.Second)
		if d, _ := l.Admit(ctx, "j", time.Time{}); !d.Allowed || d.Waited != 3*time.Second {
			t.Fatalf("after pause: %+v", d)
		}
	})
}

// TestExhaustWithdrawsWaiters: an upstream 20005 while requests wait takes
// their slots away: each is given back and the request asks again, which
// the block refuses at once when it outlasts the wait.
func TestExhaustWithdrawsWaiters(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, s, obs := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) { c.MaxWait = 30 * time.Second })
		ctx := context.Background()
		l.Admit(ctx, "k", time.Time{})
		out := make(chan outcome, 2)
		admitAsync(ctx, l, "k", 0, out)
		admitAsync(ctx, l, "k", 1, out)
		time.Sleep(time.Second)
		if err := l.Exhaust(ctx, "k", time.Minute); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			o := <-out
			if o.err != nil || o.d.Allowed || o.d.Reason != ReasonBlocked || o.d.RetryAfter != time.Minute || o.d.Waited != time.Second {
				t.Fatalf("waiter %d: %+v %v, want refused at the block, retry after 1m", o.i, o.d, o.err)
			}
		}
		synctest.Wait()
		if c := s.Counted()["k"]; len(c) != 1 || c[0].Reserved {
			t.Fatalf("counted %+v, want only the first take: the waiters' slots were given back", c)
		}
		if l.Queued() != 0 || obs.rejections(ReasonBlocked) != 2 {
			t.Fatalf("queued %d, rejected %+v", l.Queued(), obs.rejected)
		}
	})
}

// TestSmoothing: a turn within the wait is waited for in the same store
// call as the quota's slot; a request the quota refuses is refused at once,
// without waiting for its turn or spending it; and a turn later than the
// wait is given up rather than refused, since the quota would serve it.
func TestSmoothing(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, obs := newTestLimiter(nil, quota.Policy{Limit: 5, Window: time.Hour, Buckets: quota.DefaultBuckets}, func(c *Config) {
			c.Rate, c.Burst = 1, 2
			c.MaxWait = 1500 * time.Millisecond
		})
		ctx := context.Background()
		for range 2 {
			if d, _ := l.Admit(ctx, "k", time.Time{}); !d.Allowed || d.Waited != 0 {
				t.Fatalf("burst: %+v", d)
			}
		}
		if d, _ := l.Admit(ctx, "k", time.Time{}); !d.Allowed || d.Waited != time.Second {
			t.Fatalf("smoothed: %+v, want admitted after its 1s turn", d)
		}
		// The next turn is 1 s away, within the wait: that request waits
		// for it. The one after is 2 s away, beyond the wait: given up, the
		// quota has a slot now, which goes to the head of the queue, and
		// the newcomer takes the head's slot.
		out := make(chan outcome, 1)
		admitAsync(ctx, l, "k", 0, out)
		if d, _ := l.Admit(ctx, "k", time.Time{}); !d.Allowed || d.Waited != time.Second {
			t.Fatalf("turn beyond the wait: %+v, want admitted in the head's slot, after 1s", d)
		}
		if o := <-out; !o.d.Allowed || o.d.Waited != 0 {
			t.Fatalf("head of the queue: %+v, want admitted at once in the slot that turned up", o)
		}
		// The quota is used up: refused at once, no turn waited for.
		d, _ := l.Admit(ctx, "k", time.Time{})
		if d.Allowed || d.Waited != 0 || d.Reason != ReasonQuota {
			t.Fatalf("over quota: %+v, want refused at once", d)
		}
		if obs.rejections(ReasonSmoothing) != 0 {
			t.Fatalf("smoothing refused a request: %+v", obs.rejected)
		}
	})
}

// TestSmoothingSpendsNoTurnOnRefusals: refused requests give their turn
// back, so once the quota frees the next request goes at once.
func TestSmoothingSpendsNoTurnOnRefusals(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
			c.Rate, c.Burst = 0.1, 1 // one turn every 10 s
			c.MaxWait = 500 * time.Millisecond
		})
		ctx := context.Background()
		l.Admit(ctx, "k", time.Time{})
		time.Sleep(10 * time.Second) // the turn is back
		for range 20 {
			if d, _ := l.Admit(ctx, "k", time.Time{}); d.Allowed || d.Waited != 0 {
				t.Fatalf("over quota: %+v", d)
			}
		}
		time.Sleep(time.Second) // the quota's slot frees at 11 s
		if d, _ := l.Admit(ctx, "k", time.Time{}); !d.Allowed || d.Waited != 0 {
			t.Fatalf("after the refusals: %+v, want admitted at once", d)
		}
	})
}

func TestAnonymous(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, obs := newTestLimiter(nil, quota.Policy{Limit: 1000, Window: time.Hour, Buckets: quota.DefaultBuckets}, func(c *Config) {
			c.AnonymousRate, c.AnonymousBurst = 1, 1
			c.MaxWait = 1500 * time.Millisecond
		})
		ctx := context.Background()
		if d, _ := l.Admit(ctx, "", time.Time{}); !d.Allowed || d.Limit != 0 {
			t.Fatalf("anonymous: %+v", d)
		}
		out := make(chan outcome, 1)
		admitAsync(ctx, l, "", 0, out)
		// No quota to serve it: a turn beyond the wait is refused.
		if d, _ := l.Admit(ctx, "", time.Time{}); d.Allowed || d.Reason != ReasonSmoothing || d.RetryAfter != 2*time.Second {
			t.Fatalf("anonymous over its rate: %+v", d)
		}
		if o := <-out; !o.d.Allowed || o.d.Waited != time.Second {
			t.Fatalf("anonymous smoothed: %+v", o)
		}
		if obs.rejections(ReasonSmoothing) != 1 {
			t.Fatalf("obs %+v", obs.rejected)
		}
	})
}

func TestCloseWakesWaiters(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, s, _ := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: quota.DefaultBuckets}, nil)
		ctx := context.Background()
		l.Admit(ctx, "k", time.Time{})
		out := make(chan outcome, 2)
		for i := range 2 {
			admitAsync(ctx, l, "k", i, out)
		}
		l.Close()
		for range 2 {
			if o := <-out; !errors.Is(o.err, ErrClosed) {
				t.Fatalf("%+v", o)
			}
		}
		if l.Queued() != 0 || len(s.Counted()["k"]) != 1 {
			t.Fatalf("queued %d, counted %+v", l.Queued(), s.Counted()["k"])
		}
	})
}

// TestSweepKeepsBusyKeys: Sweep drops a key unused for IdleAfter and one
// whose smoother is full again (it holds nothing a fresh state would not),
// and keeps one whose smoother is still refilling.
func TestSweepKeepsBusyKeys(t *testing.T) {
	t.Parallel()
	clk := clockwork.NewFakeClockAt(epoch)
	// Smoothing at 0.1/s with a burst of 5: an unused smoother refills in
	// 50 s.
	l, _, _ := newTestLimiter(clk, quota.Policy{Limit: 100, Window: time.Minute, Buckets: quota.DefaultBuckets}, func(c *Config) {
		c.IdleAfter, c.Rate, c.Burst = time.Minute, 0.1, 5
	})
	ctx := context.Background()
	admit := func(key string, n int) {
		for range n {
			if d, err := l.Admit(ctx, key, time.Time{}); err != nil || !d.Allowed {
				t.Fatalf("%s: %+v, %v", key, d, err)
			}
		}
	}
	admit("idle", 1) // t=0: idle for IdleAfter at the sweep
	clk.Advance(5 * time.Second)
	admit("spent", 1) // t=5: its smoother is full again by the sweep
	clk.Advance(35 * time.Second)
	admit("drained", 5) // t=40: 2 of 5 tokens back by the sweep
	clk.Advance(19 * time.Second)
	admit("recent", 1) // t=59
	clk.Advance(2 * time.Second)
	if n := l.Sweep(); n != 2 {
		t.Fatalf("%d keys left, want 2 (drained, recent)", n)
	}
	tracked := func(key string) bool {
		sh := l.shard(key)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		return sh.keys[key] != nil
	}
	drained, recent := tracked("drained"), tracked("recent")
	if !drained || !recent {
		t.Fatalf("kept drained %v, recent %v; want both", drained, recent)
	}
}

// TestIdleAfterZeroKeepsNothingIdle: IdleAfter 0 means no idle time, not
// a default: a key no request uses is dropped at the next sweep even with
// its smoother still refilling; DefaultConfig's 10 minutes keep it.
func TestIdleAfterZeroKeepsNothingIdle(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		idle time.Duration
		want int
	}{{0, 0}, {DefaultConfig().IdleAfter, 1}} {
		clk := clockwork.NewFakeClockAt(epoch)
		l, _, _ := newTestLimiter(clk, quota.Policy{Limit: 100, Window: time.Minute, Buckets: quota.DefaultBuckets}, func(cfg *Config) {
			cfg.IdleAfter, cfg.Rate, cfg.Burst = c.idle, 0.1, 5
		})
		if d, err := l.Admit(context.Background(), "k", time.Time{}); err != nil || !d.Allowed {
			t.Fatalf("%+v, %v", d, err)
		}
		clk.Advance(time.Second)
		if n := l.Sweep(); n != c.want {
			t.Errorf("IdleAfter %s: %d keys left, want %d", c.idle, n, c.want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("New without a Store did not panic")
		}
	}()
	New(Config{})
}

// TestNoWaiterPastItsDeadline: requests with waits of every length,
// arriving over time, some leaving early: whatever the queue hands around
// (slots move up on every departure), none is admitted after its deadline,
// and the quota holds.
func TestNoWaiterPastItsDeadline(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := quota.Policy{Limit: 3, Window: 10 * time.Second, Buckets: 10}
		l, _, _ := newTestLimiter(nil, p, func(c *Config) { c.MaxDepth, c.MaxWait = 100, time.Minute })
		rng := rand.New(rand.NewPCG(7, 7))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var admitted []time.Time
		for i := range 120 {
			wait := time.Duration(1+rng.IntN(30)) * time.Second
			leaveAfter := time.Duration(rng.IntN(40)) * time.Second
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), leaveAfter)
				defer cancel()
				start := time.Now()
				d, err := l.Admit(ctx, "k", start.Add(wait))
				if err == nil && d.Allowed {
					if now := time.Now(); now.After(start.Add(wait)) {
						t.Errorf("request %d admitted %s after arriving, its wait %s", i, now.Sub(start), wait)
					}
					mu.Lock()
					admitted = append(admitted, time.Now())
					mu.Unlock()
				}
			})
			time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		}
		wg.Wait()
		slices.SortFunc(admitted, time.Time.Compare)
		j := 0
		for i := range admitted {
			for admitted[i].Sub(admitted[j]) >= p.Span() {
				j++
			}
			if i-j+1 > p.Limit {
				t.Fatalf("%d admitted within one span", i-j+1)
			}
		}
		if len(admitted) < 10 {
			t.Fatalf("only %d admitted", len(admitted))
		}
	})
}
