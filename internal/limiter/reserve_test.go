package limiter

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// redisReplica is one gateway replica's store and limiter on a shared Redis
// and a shared fake clock (the scripts read it through the test hook).
type redisReplica struct {
	store *quota.RedisStore
	lim   *Limiter
}

func newRedisReplica(t *testing.T, srv *redistest.Server, clock *clockwork.FakeClock, p quota.Policy, lease time.Duration) *redisReplica {
	t.Helper()
	ro := quota.DefaultRedisOptions()
	ro.Timeout, ro.MaxHold, ro.Clock = time.Second, 3*lease, clock
	rs := quota.NewRedisStore(newRedisTestClient(t, srv, time.Second), p, ro)
	cfg := DefaultConfig()
	cfg.Store, cfg.Clock, cfg.MaxWait, cfg.MaxDepth, cfg.MaxQueued, cfg.Lease, cfg.LeaseMax = rs, clock, time.Minute, 10, 100, lease, 8
	lim := New(cfg)
	t.Cleanup(lim.Close)
	return &redisReplica{store: rs, lim: lim}
}

// TestRedisReservationsAcrossReplicas: a slot one replica reserved for a
// waiter is seen by every other: the next waiter, at any replica, gets the
// slot after it; a refusal's Retry-After counts every reservation; and a
// lease never takes a reserved slot.
func TestRedisReservationsAcrossReplicas(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 2, Window: 10 * time.Second, Buckets: 10} // 1 s buckets: a slot frees 11 s after its bucket starts
	a := newRedisReplica(t, srv, clock, p, 0)
	b := newRedisReplica(t, srv, clock, p, 100*time.Millisecond)
	ctx := context.Background()
	key := redisTestKey(t, "k")
	take := func(r *redisReplica, tk quota.Take) quota.Result {
		t.Helper()
		res, err := r.store.Take(ctx, key, tk)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	take(a, quota.Take{})
	clock.Advance(time.Second)
	take(b, quota.Take{})
	if res := take(a, quota.Take{Wait: 20 * time.Second}); !res.Allowed || res.Delay != 10*time.Second {
		t.Fatalf("replica a's waiter: %+v, want the slot freeing at 11s", res)
	}
	if res := take(b, quota.Take{Wait: 20 * time.Second}); !res.Allowed || res.Delay != 11*time.Second {
		t.Fatalf("replica b's waiter: %+v, want the next slot, freeing at 12s", res)
	}
	if res := take(a, quota.Take{Wait: 20 * time.Second}); res.Allowed || res.RetryAfter != 21*time.Second {
		t.Fatalf("third waiter: %+v, want refused with the first slot nobody holds (22s)", res)
	}
	// At 11.5 s the first slot has freed, but it is a's waiter's: replica
	// b's lease cannot have it.
	clock.Advance(10500 * time.Millisecond)
	if res := take(b, quota.Take{Want: 8, Hold: 100 * time.Millisecond}); res.Allowed || res.RetryAfter != 10500*time.Millisecond {
		t.Fatalf("lease at 11.5s: %+v, want refused until 22s", res)
	}
}

// TestRedisWaiterLeaves: a client that leaves while holding a reservation
// does not spend the quota (its replica gives the latest slot back in
// Redis), the waiter behind it moves up into its slot, and no goroutine is
// left (goleak, TestMain).
func TestRedisWaiterLeaves(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}
	a := newRedisReplica(t, srv, clock, p, 0)
	b := newRedisReplica(t, srv, clock, p, 0)
	bg := context.Background()
	key := redisTestKey(t, "k")
	if d, err := a.lim.Admit(bg, key, time.Time{}); err != nil || !d.Allowed {
		t.Fatalf("first: %+v %v", d, err)
	}
	out := make(chan outcome, 3)
	leaving, leave := context.WithCancel(bg)
	queue := func(i int, r *redisReplica, ctx context.Context) {
		go func() {
			d, err := r.lim.Admit(ctx, key, time.Time{})
			out <- outcome{i, d, err}
		}()
		if err := clock.BlockUntilContext(ctxT(t), i+1); err != nil { // each waiter sleeps on one timer
			t.Fatal(err)
		}
	}
	queue(0, a, leaving) // the slot at 11 s
	queue(1, a, bg)      // 22 s
	queue(2, b, bg)      // 33 s, at the other replica
	leave()
	if o := <-out; o.i != 0 || !errors.Is(o.err, context.Canceled) {
		t.Fatalf("the waiter that left: %+v", o)
	}
	// Replica a gave back the 22 s slot: a newcomer at replica b gets it.
	res, err := b.store.Take(bg, key, quota.Take{Wait: time.Minute})
	if err != nil || !res.Allowed || res.Delay != 22*time.Second {
		t.Fatalf("newcomer: %+v %v, want the slot given back (22s)", res, err)
	}
	if err := b.store.Release(bg, key, res.Slot); err != nil {
		t.Fatal(err)
	}
	if err := clock.BlockUntilContext(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	clock.Advance(11 * time.Second)
	if o := <-out; o.i != 1 || !o.d.Allowed {
		t.Fatalf("the waiter behind: %+v, want admitted in the slot at 11s", o)
	}
	clock.Advance(22 * time.Second)
	if o := <-out; o.i != 2 || !o.d.Allowed {
		t.Fatalf("replica b's waiter: %+v, want admitted at 33s", o)
	}
	// Reserved in Redis: the slots of the two admitted waiters only.
	fields, err := a.store.Client().HGetAll(bg, a.store.Key(key)).Result()
	if err != nil {
		t.Fatal(err)
	}
	start := clock.Now().Add(-33 * time.Second).UnixMilli()
	want := map[string]string{"q" + strconv.FormatInt(start+11_000, 10): "1", "q" + strconv.FormatInt(start+33_000, 10): "1"}
	for f, v := range fields {
		if f[0] == 'q' && want[f] != v {
			t.Fatalf("Redis holds reservation %s=%s; want only %v", f, v, want)
		}
		delete(want, f)
	}
	if len(want) != 0 {
		t.Fatalf("reservations missing from Redis: %v (fields %v)", want, fields)
	}
}

// ctxT bounds a wait of the test on its fake clock.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
