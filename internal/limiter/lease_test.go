package limiter

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/testutil/leaktest"
	"github.com/fusioo-gateway/gateway/internal/testutil/poll"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// leaseRig is one gateway replica's limiter over a quota.RedisStore that runs on
// a shared fake clock (the scripts read it through the test hook instead of
// Redis TIME), with its round trips counted.
type leaseRig struct {
	lim   *Limiter
	store *quota.RedisStore
	calls *redistest.CommandCounter
}

func newLeaseRig(t *testing.T, srv *redistest.Server, clock *clockwork.FakeClock, p quota.Policy, lease time.Duration, most int) *leaseRig {
	t.Helper()
	client := newRedisTestClient(t, srv, time.Second)
	calls := &redistest.CommandCounter{}
	client.AddHook(calls)
	ro := quota.DefaultRedisOptions()
	ro.Timeout, ro.MaxHold, ro.Clock = time.Second, 3*lease, clock
	rs := quota.NewRedisStore(client, p, ro)
	cfg := DefaultConfig()
	cfg.Store, cfg.Clock, cfg.MaxDepth, cfg.MaxQueued, cfg.Lease, cfg.LeaseMax = rs, clock, 10, 100, lease, most
	lim := New(cfg)
	return &leaseRig{lim: lim, store: rs, calls: calls}
}

// admit asks for one attempt without waiting (MaxWait 0), then lets a
// refill it started finish, so the fake clock decides what a test sees.
func (r *leaseRig) admit(t *testing.T, key string) Decision {
	t.Helper()
	d, err := r.lim.Admit(context.Background(), key, time.Time{})
	if err != nil {
		t.Fatalf("admit: %v", err)
	}
	r.lim.refills.Wait()
	return d
}

// TestLeaseCutsRoundTrips: a busy key's admissions come from leases, so
// Redis is asked a small fraction of the time; what Redis counts is what
// was used plus at most the last lease's leftovers; and the RateLimit
// figures a lease hands out stay consistent.
func TestLeaseCutsRoundTrips(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 100_000, Window: time.Hour, Buckets: quota.DefaultBuckets}
	const most = 32
	r := newLeaseRig(t, srv, clock, p, 100*time.Millisecond, most)
	key := redisTestKey(t, "k")

	const n = 2000 // one per millisecond: 100 per lease time, above most
	lastRemaining := p.Limit
	for i := range n {
		d := r.admit(t, key)
		if !d.Allowed {
			t.Fatalf("admission %d refused: %+v", i, d)
		}
		if d.Remaining >= lastRemaining {
			t.Fatalf("admission %d: Remaining %d did not fall below %d", i, d.Remaining, lastRemaining)
		}
		lastRemaining = d.Remaining
		clock.Advance(time.Millisecond)
	}
	calls := int(r.calls.N.Load())
	counted := redistest.BucketSum(t, r.store.Client(), r.store.Key(key))
	t.Logf("%d admissions, %d Redis calls, %d counted", n, calls, counted)
	if calls > n/most+20 {
		t.Fatalf("%d Redis calls for %d admissions, want about %d (leases of %d)", calls, n, n/most, most)
	}
	// Held here and not used: what is left of the current batch and the
	// next one, fetched ahead.
	if counted < n || counted > n+2*most {
		t.Fatalf("Redis counts %d for %d admissions, want between %d and %d", counted, n, n, n+2*most)
	}
	if want := p.Limit - counted; lastRemaining < want || lastRemaining > want+2*most {
		t.Fatalf("last Remaining %d, want Redis's %d plus the lease's leftovers", lastRemaining, want)
	}

	// The leftovers of a lease are never used late: once the longest hold
	// (a refill's, 2.5 lease times) has passed, the next admission asks
	// Redis again.
	clock.Advance(250 * time.Millisecond)
	before := r.calls.N.Load()
	r.admit(t, key)
	if r.calls.N.Load() != before+1 {
		t.Fatal("an admission after the lease ended did not ask Redis")
	}
	// Demand gone: after a long idle time the lease is sized to it, a
	// single slot.
	clock.Advance(10 * time.Second)
	counted = redistest.BucketSum(t, r.store.Client(), r.store.Key(key))
	r.admit(t, key)
	if got := redistest.BucketSum(t, r.store.Client(), r.store.Key(key)); got != counted+1 {
		t.Fatalf("after 10s idle Redis counts %d, want %d (a single slot)", got, counted+1)
	}
}

// TestLeaseSteadyRateWastesLittle: at a steady rate of a few requests per
// lease time, leases are sized to the rate: Redis is asked less than once
// per request and next to no leased slot goes unused.
func TestLeaseSteadyRateWastesLittle(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 100_000, Window: time.Hour, Buckets: quota.DefaultBuckets}
	for _, every := range []time.Duration{50 * time.Millisecond, 20 * time.Millisecond, 7 * time.Millisecond} {
		r := newLeaseRig(t, srv, clock, p, 100*time.Millisecond, 32)
		key := redisTestKey(t, every.String())
		n := int(20 * time.Second / every)
		for range n {
			r.admit(t, key)
			clock.Advance(every)
		}
		calls := int(r.calls.N.Load())
		waste := redistest.BucketSum(t, r.store.Client(), r.store.Key(key)) - n
		t.Logf("one request every %s: %d requests, %d Redis calls, %d leased slots unused", every, n, calls, waste)
		if calls > n*3/4 || waste > n/100+2 {
			t.Errorf("one request every %s: %d Redis calls and %d unused slots for %d requests, want fewer than 3/4 and 1%%",
				every, calls, waste, n)
		}
	}
}

// TestLeaseSlotsCountedAhead: leased slots are counted in the bucket of
// the end of the lease time, so one used at the last moment of a lease is
// held a whole span after that use.
func TestLeaseSlotsCountedAhead(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 1000, Window: 10 * time.Second, Buckets: 100} // 100ms buckets
	lease := 250 * time.Millisecond
	r := newLeaseRig(t, srv, clock, p, lease, 8)
	key := redisTestKey(t, "k")

	r.admit(t, key) // a first take: one slot, in the current bucket
	clock.Advance(lease / 2)
	r.admit(t, key) // demand shows: a batch of two slots, counted ahead
	now := clock.Now().UnixMilli()
	all, err := r.store.Client().HGetAll(context.Background(), r.store.Key(key)).Result()
	if err != nil {
		t.Fatal(err)
	}
	delete(all, "m")
	first := strconv.FormatInt((now-lease.Milliseconds()/2)/100, 10)
	ahead := strconv.FormatInt((now+lease.Milliseconds())/100, 10)
	if want := map[string]string{first: "1", ahead: "2"}; !maps.Equal(all, want) {
		t.Fatalf("buckets %v, want %v", all, want)
	}
	// The second slot of the batch is used 1ms before the batch ends: it
	// comes from the batch (nothing more is counted where the batch was;
	// the refill it starts is counted further ahead).
	clock.Advance(lease - time.Millisecond)
	if d := r.admit(t, key); !d.Allowed {
		t.Fatalf("second slot: %+v, want allowed", d)
	}
	if got, _ := r.store.Client().HGet(context.Background(), r.store.Key(key), ahead).Result(); got != "2" {
		t.Fatalf("the batch's bucket holds %s after its second slot was used, want 2", got)
	}
	used := clock.Now()
	// That slot is held a whole span after its use: a replica with a limit
	// of 2 sees no room a millisecond before.
	other := newLeaseRig(t, srv, clock, quota.Policy{Limit: 2, Window: p.Window, Buckets: p.Buckets}, 0, 0)
	clock.Advance(p.Span() - time.Millisecond - clock.Since(used))
	if d := other.admit(t, key); d.Allowed {
		t.Fatalf("1ms before a span after the last use, a limit of 2 admitted: %+v", d)
	}
}

// TestLeaseExhaustDropsLease: when the upstream says the quota is gone,
// the slots a replica holds in a lease are not used.
func TestLeaseExhaustDropsLease(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 1000, Window: time.Minute, Buckets: quota.DefaultBuckets}
	r := newLeaseRig(t, srv, clock, p, 100*time.Millisecond, 8)
	key := redisTestKey(t, "k")
	for range 4 { // 1 slot, a lease of 2 used up, then a lease of 4
		r.admit(t, key)
		clock.Advance(time.Millisecond)
	}
	if left := r.leaseLeft(key); left == 0 {
		t.Fatal("no lease held")
	}
	if err := r.lim.Exhaust(context.Background(), key, time.Second); err != nil {
		t.Fatal(err)
	}
	if d := r.admit(t, key); d.Allowed || !d.Blocked {
		t.Fatalf("after Exhaust: %+v, want refused as blocked", d)
	}
}

func (r *leaseRig) leaseLeft(key string) int {
	ks := r.lim.acquire(key)
	defer r.lim.release(key, ks)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.lease.cur.left + ks.lease.next.left
}

// TestLeaseNeverExceedsQuota: three replicas with leases share one key in
// Redis under demand that varies between a trickle and three times the
// quota; no rolling span ever holds more uses than the limit, and the
// quota is still nearly all used while demand exceeds it.
func TestLeaseNeverExceedsQuota(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 300, Window: 2 * time.Second, Margin: 100 * time.Millisecond, Buckets: 20}
	var rigs []*leaseRig
	for range 3 {
		rigs = append(rigs, newLeaseRig(t, srv, clock, p, 100*time.Millisecond, 32))
	}
	key := redisTestKey(t, "k")
	rng := rand.New(rand.NewPCG(1, 2))

	const step = 5 * time.Millisecond
	var uses []int64 // fake ms
	var saturatedUses, saturatedSpanStart int64 = 0, -1
	steps := int(10 * p.Window / step)
	for i := range steps {
		// Demand per step and replica: a trickle, then three times the
		// quota, then bursts.
		var perStep float64
		switch phase := i * 4 / steps; phase {
		case 0:
			perStep = 0.1
		case 1, 2:
			perStep = 3 * float64(p.Limit) / float64(p.Window/step) / 3
		default:
			perStep = float64(rng.IntN(3))
		}
		for _, r := range rigs {
			n := int(perStep)
			if rng.Float64() < perStep-float64(n) {
				n++
			}
			for range n {
				if d := r.admit(t, key); d.Allowed {
					ms := clock.Now().UnixMilli()
					uses = append(uses, ms)
					if i*4/steps >= 1 && i*4/steps <= 2 {
						if saturatedSpanStart < 0 {
							saturatedSpanStart = ms
						}
						saturatedUses++
					}
				}
			}
		}
		clock.Advance(step)
	}
	slices.Sort(uses)
	span := p.Span().Milliseconds()
	worst := 0
	for i, j := 0, 0; i < len(uses); i++ {
		for uses[i]-uses[j] >= span {
			j++
		}
		worst = max(worst, i-j+1)
	}
	calls := 0
	for _, r := range rigs {
		calls += int(r.calls.N.Load())
	}
	// The saturated phase lasts half the run: 5 windows.
	full := float64(p.Limit) * 5 * float64(p.Window) / float64(p.Span())
	t.Logf("%d uses, %d Redis calls, most in one rolling span: %d (limit %d), saturated phase used %d of about %.0f",
		len(uses), calls, worst, p.Limit, saturatedUses, full)
	if worst > p.Limit {
		t.Fatalf("a rolling span of %s held %d uses, limit %d", p.Span(), worst, p.Limit)
	}
	if float64(saturatedUses) < 0.85*full {
		t.Fatalf("saturated phase used %d slots, want at least 85%% of %.0f", saturatedUses, full)
	}
}

// TestLeaseWrittenBackAfterLoss: the fallback's shadow counts a lease as
// the slots Redis counted for it, in the bucket ahead where Redis counted
// them, so a Redis that lost the key gets every leased slot back, used or
// not.
func TestLeaseWrittenBackAfterLoss(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := quota.Policy{Limit: 10_000, Window: time.Minute, Buckets: quota.DefaultBuckets}
	lease := 100 * time.Millisecond
	client := newRedisTestClient(t, srv, time.Second)
	ro := quota.DefaultRedisOptions()
	ro.Timeout, ro.MaxHold = time.Second, 3*lease
	rs := quota.NewRedisStore(client, p, ro)
	fb := quota.NewFallbackStore(rs, p, quota.DefaultFallbackOptions())
	clock := clockwork.NewFakeClock()
	cfg := DefaultConfig()
	cfg.Store, cfg.Clock, cfg.MaxDepth, cfg.MaxQueued, cfg.Lease, cfg.LeaseMax = fb, clock, 10, 100, lease, 32
	lim := New(cfg)
	r := &leaseRig{lim: lim, store: rs}
	key := redisTestKey(t, "k")
	ctx := context.Background()
	for i := range 40 {
		if d := r.admit(t, key); !d.Allowed {
			t.Fatalf("admission %d: %+v", i, d)
		}
		clock.Advance(time.Millisecond)
	}
	held := r.leaseLeft(key)
	counted := redistest.BucketSum(t, client, rs.Key(key))
	if held == 0 || counted != 40+held {
		t.Fatalf("Redis counts %d for 40 admissions with %d slots held in leases, want them all", counted, held)
	}
	if err := client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The next take sees the key's new epoch, so the shadow's counts are
	// known lost, and the write-back restores them all.
	if _, err := fb.Take(ctx, key, quota.Take{}); err != nil {
		t.Fatal(err)
	}
	if !fb.Reconcile(ctx) {
		t.Fatal("reconcile failed")
	}
	if got := redistest.BucketSum(t, client, rs.Key(key)); got != counted+1 {
		t.Fatalf("after the loss and the write-back Redis counts %d, want %d", got, counted+1)
	}
}

// TestLeaseConcurrentAccounting: concurrent requests of a few keys, with
// refills in the background on the real clock: every admission is counted
// in Redis, and what Redis counts beyond the admissions is what the leases
// still hold (at most two batches per key) plus the few slots that expired
// unused on the way (the real clock runs on while the goroutines wait).
func TestLeaseConcurrentAccounting(t *testing.T) {
	srv := redistest.Start(t)
	p := quota.Policy{Limit: 1_000_000, Window: time.Hour, Buckets: quota.DefaultBuckets}
	lease, most := 20*time.Millisecond, 16
	client := newRedisTestClient(t, srv, time.Second)
	ro := quota.DefaultRedisOptions()
	ro.Timeout, ro.MaxHold = time.Second, 3*lease
	rs := quota.NewRedisStore(client, p, ro)
	cfg := DefaultConfig()
	cfg.Store, cfg.MaxDepth, cfg.MaxQueued, cfg.Lease, cfg.LeaseMax = rs, 10, 100, lease, most
	lim := New(cfg)
	keys := []string{redisTestKey(t, "a"), redisTestKey(t, "b")}
	var admitted [2]atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				k := (g + i) % 2
				d, err := lim.Admit(context.Background(), keys[k], time.Time{})
				if err != nil || !d.Allowed {
					t.Errorf("admission: %+v, %v", d, err)
					return
				}
				admitted[k].Add(1)
			}
		})
	}
	wg.Wait()
	lim.Close() // waits for refills in flight
	r := &leaseRig{lim: lim, store: rs}
	for k, key := range keys {
		held := r.leaseLeft(key)
		counted := redistest.BucketSum(t, client, rs.Key(key))
		t.Logf("key %d: %d admitted, %d counted, %d held", k, admitted[k].Load(), counted, held)
		extra := int64(counted) - admitted[k].Load() - int64(held)
		if extra < 0 || extra > 2*int64(most) || held > 2*most {
			t.Errorf("key %d: Redis counts %d for %d admissions and %d slots held (at most %d): %d expired unused, want 0 to %d",
				k, counted, admitted[k].Load(), held, 2*most, extra, 2*most)
		}
	}
}

// TestLeaseRefillAfterExhaustNotUsed: a refill that was in flight when the
// upstream said the quota is gone brings slots that are never used.
func TestLeaseRefillAfterExhaustNotUsed(t *testing.T) {
	srv := redistest.Start(t)
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
	p := quota.Policy{Limit: 1000, Window: time.Minute, Buckets: quota.DefaultBuckets}
	lease := 100 * time.Millisecond
	r := newLeaseRig(t, srv, clock, p, lease, 8)
	key := redisTestKey(t, "k")
	for range 4 { // 1 slot, a batch of 2 used up, a batch of 4 (with refills)
		r.admit(t, key)
		clock.Advance(time.Millisecond)
	}
	// Half the lease time later the next use starts a refill, which
	// Redis, paused, cannot answer yet.
	clock.Advance(lease / 2)
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	if d, err := r.lim.Admit(context.Background(), key, time.Time{}); err != nil || !d.Allowed {
		t.Fatalf("admission from the lease: %+v, %v", d, err)
	}
	exhausted := make(chan error, 1)
	go func() { exhausted <- r.lim.Exhaust(context.Background(), key, time.Minute) }()
	poll.Until(t, 5*time.Second, "lease dropped", func() bool { return r.leaseLeft(key) == 0 })
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := <-exhausted; err != nil {
		t.Fatalf("exhaust: %v", err)
	}
	r.lim.refills.Wait()
	if left := r.leaseLeft(key); left != 0 {
		t.Fatalf("%d slots usable after Exhaust (from the refill in flight)", left)
	}
	if d := r.admit(t, key); d.Allowed || !d.Blocked {
		t.Fatalf("after Exhaust: %+v, want refused as blocked", d)
	}
}
