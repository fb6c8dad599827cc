package quota

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/fusioo-gateway/gateway/internal/testutil/leaktest"
	"github.com/fusioo-gateway/gateway/internal/testutil/poll"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// fallbackRecorder records what a FallbackStore reports.
type fallbackRecorder struct {
	mu     sync.Mutex
	errs   map[string]int
	active []bool
}

func (o *fallbackRecorder) StoreError(op string, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.errs == nil {
		o.errs = map[string]int{}
	}
	o.errs[op]++
}

func (o *fallbackRecorder) FallbackActive(a bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.active = append(o.active, a)
}

func (o *fallbackRecorder) snapshot() (map[string]int, []bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	errs := map[string]int{}
	for k, v := range o.errs {
		errs[k] = v
	}
	return errs, slices.Clone(o.active)
}

// scriptCounter counts the quota scripts a client runs (EVALSHA/EVAL),
// leaving out pings.
type scriptCounter struct {
	mu sync.Mutex
	n  int
}

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			c.mu.Lock()
			c.n++
			c.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (c *scriptCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type fallbackRig struct {
	srv     *redistest.Server
	client  redis.UniversalClient
	scripts *scriptCounter
	redis   *RedisStore
	store   *FallbackStore
	obs     *fallbackRecorder
}

// fallbackOptions is DefaultFallbackOptions with the breaker open for
// openFor and Run ticking four times as often (at least every 10ms),
// changed by set (when not nil).
func fallbackOptions(openFor time.Duration, set func(*FallbackOptions)) FallbackOptions {
	o := DefaultFallbackOptions()
	o.OpenFor, o.ProbeEvery = openFor, max(openFor/4, 10*time.Millisecond)
	if set != nil {
		set(&o)
	}
	return o
}

func newFallbackRig(t *testing.T, srv *redistest.Server, p Policy, timeout time.Duration, opts FallbackOptions) *fallbackRig {
	t.Helper()
	r := &fallbackRig{srv: srv, client: newRedisTestClient(t, srv, timeout), scripts: &scriptCounter{}, obs: &fallbackRecorder{}}
	r.client.AddHook(r.scripts)
	r.redis = NewRedisStore(r.client, p, redisOptions(timeout, false))
	if opts.Observer == nil {
		opts.Observer = r.obs
	}
	r.store = NewFallbackStore(r.redis, p, opts)
	return r
}

func (r *fallbackRig) take(t *testing.T, key string) Result {
	t.Helper()
	res, err := r.store.Take(context.Background(), key, Take{})
	if err != nil {
		t.Fatalf("take: %v", err)
	}
	return res
}

// takeN takes n times and returns how many were allowed.
func (r *fallbackRig) takeN(t *testing.T, key string, n int) int {
	t.Helper()
	ok := 0
	for range n {
		if r.take(t, key).Allowed {
			ok++
		}
	}
	return ok
}

// TestFallbackKillAndRestart: Redis killed mid-test, the store answers
// locally within its share and the last known remaining, never with an
// error; Redis restarts empty, the store recovers and writes back what was
// admitted before and during the outage.
func TestFallbackKillAndRestart(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 20, Window: time.Minute, Buckets: DefaultBuckets}
	clock := clockwork.NewFakeClockAt(time.Now())
	r := newFallbackRig(t, srv, p, 100*time.Millisecond, fallbackOptions(50*time.Millisecond, func(o *FallbackOptions) { o.Share, o.Clock = 0.5, clock }))
	key := redisTestKey(t, "k")
	name := r.redis.Key(key)
	ctx := context.Background()

	if n := r.takeN(t, key, 6); n != 6 {
		t.Fatalf("%d of 6 admitted through Redis", n)
	}
	if r.store.Degraded() || r.store.Status() != "redis" {
		t.Fatalf("degraded before the outage: %s", r.store.Status())
	}

	srv.Kill()
	// Local share: floor(0.5*20) = 10; last known remaining 14, of which
	// this replica may use floor(0.5*14) = 7 until Redis's counts age out.
	allowed := 0
	for i := range 12 {
		res := r.take(t, key)
		if res.Allowed {
			allowed++
		} else if res.RetryAfter <= 0 || res.Limit != p.Limit {
			t.Fatalf("local denial %d: %+v", i, res)
		}
		if i == 2 && !r.store.Degraded() {
			t.Fatal("not degraded after 3 failures")
		}
	}
	if allowed != 7 {
		t.Fatalf("%d admitted locally, want 7", allowed)
	}
	errs, active := r.obs.snapshot()
	if errs["take"] != 3 || !slices.Equal(active, []bool{true}) {
		t.Fatalf("observer: errors %v, fallback %v; want 3 take errors and [true]", errs, active)
	}
	if s := r.store.Status(); !strings.HasPrefix(s, "local (redis unavailable since ") {
		t.Fatalf("status %q", s)
	}

	srv.Restart()
	poll.Until(t, 10*time.Second, "recovery after restart", func() bool { return r.store.recover(ctx) })
	if r.store.Degraded() || r.store.Status() != "redis" {
		t.Fatalf("still degraded: %s", r.store.Status())
	}
	if _, active := r.obs.snapshot(); !slices.Equal(active, []bool{true, false}) {
		t.Fatalf("fallback changes %v, want [true false]", active)
	}
	// Redis came back empty: the new key has another epoch, so the
	// pre-outage counts are written back with the outage's.
	if sum := redistest.BucketSum(t, r.client, name); sum != 6+7 {
		t.Fatalf("Redis holds %d after reconciliation, want 13 (6 before + 7 during the outage)", sum)
	}
	if pttl := r.client.PTTL(ctx, name).Val(); pttl <= 0 || pttl > p.Span()+p.BucketWidth() {
		t.Fatalf("PTTL after write-back %s", pttl)
	}
	if res := r.take(t, key); !res.Allowed || res.Remaining != 20-13-1 {
		t.Fatalf("first take through Redis after recovery: %+v, want Remaining 6", res)
	}
}

// TestFallbackPausedRedis: a Redis that stops answering (SIGSTOP) costs at
// most the timeout per call until the breaker opens; then takes never touch
// Redis; Run recovers on its own once Redis answers, writing back only what
// Redis does not hold.
func TestFallbackPausedRedis(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	const timeout = 50 * time.Millisecond
	p := Policy{Limit: 100, Window: time.Minute, Buckets: DefaultBuckets}
	r := newFallbackRig(t, srv, p, timeout, fallbackOptions(200*time.Millisecond, func(o *FallbackOptions) { o.Share = 1 }))
	key := redisTestKey(t, "k")
	name := r.redis.Key(key)

	const before = 10
	if n := r.takeN(t, key, before); n != before {
		t.Fatalf("%d admitted", n)
	}
	srv.Pause()
	for i := range 3 {
		start := time.Now()
		res := r.take(t, key)
		if took := time.Since(start); took > 10*timeout {
			t.Fatalf("take %d took %s with Redis paused, want <= %s", i, took, 10*timeout)
		}
		if !res.Allowed {
			t.Fatalf("take %d refused: %+v", i, res)
		}
	}
	if !r.store.Degraded() {
		t.Fatal("breaker did not open")
	}
	scripts := r.scripts.count()
	start := time.Now()
	local := r.takeN(t, key, 20)
	// One Redis timeout for all 20 would already show they waited on it;
	// 5x leaves room for a loaded machine.
	if took := time.Since(start); took > 5*timeout {
		t.Fatalf("20 takes with the breaker open took %s", took)
	}
	if n := r.scripts.count(); n != scripts {
		t.Fatalf("%d scripts sent to Redis with the breaker open", n-scripts)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.store.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })

	srv.Resume()
	poll.Until(t, 10*time.Second, "recovery after resume", func() bool { return !r.store.Degraded() })
	if res := r.take(t, key); !res.Allowed {
		t.Fatalf("take after recovery: %+v", res)
	}
	if n := r.scripts.count(); n <= scripts {
		t.Fatal("take after recovery did not go to Redis")
	}
	// Redis kept its data: the 10 pre-outage admissions must not be
	// written back again. It may hold the 3 takes that timed out (they sat
	// in the socket and ran on SIGCONT) besides the 3+20 local ones.
	outage := 3 + local
	sum := redistest.BucketSum(t, r.client, name)
	if sum < before+outage+1 || sum > before+outage+1+3 {
		t.Fatalf("Redis holds %d, want %d..%d (before %d, outage %d, after 1, up to 3 timed-out takes)",
			sum, before+outage+1, before+outage+4, before, outage)
	}
	errs, active := r.obs.snapshot()
	if errs["take"] != 3 || !slices.Equal(active, []bool{true, false}) {
		t.Fatalf("observer: errors %v, fallback %v", errs, active)
	}
}

// TestFallbackReject: with on_store_failure = "reject" takes fail with an
// error wrapping ErrStoreUnavailable and the cause.
func TestFallbackReject(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	r := newFallbackRig(t, srv, p, 100*time.Millisecond, fallbackOptions(50*time.Millisecond, func(o *FallbackOptions) { o.Reject = true }))
	key := redisTestKey(t, "k")
	ctx := context.Background()
	r.take(t, key)
	srv.Kill()
	for i := range 5 {
		_, err := r.store.Take(ctx, key, Take{})
		if !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("take %d: %v, want ErrStoreUnavailable", i, err)
		}
		// The cause: a refused connection before the breaker opens, then
		// the open breaker with the last refusal.
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("take %d: %v does not wrap the refused connection", i, err)
		}
		if i >= 3 && !errors.Is(err, gobreaker.ErrOpenState) {
			t.Fatalf("take %d: %v, want the open breaker", i, err)
		}
	}
	if err := r.store.Block(ctx, key, time.Second); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("block: %v", err)
	}
	if s := r.store.Status(); !strings.HasPrefix(s, "reject (redis unavailable since ") {
		t.Fatalf("status %q", s)
	}
	srv.Restart()
	poll.Until(t, 10*time.Second, "recovery", func() bool { return r.store.recover(ctx) })
	if res := r.take(t, key); !res.Allowed {
		t.Fatalf("take after recovery: %+v", res)
	}
}

// TestFallbackLostKeyWithoutOutage: Redis loses the data between two takes
// (a fast restart, a flush, an eviction) without the breaker noticing. Each
// replica sees the key's new epoch and writes back its own counts.
func TestFallbackLostKeyWithoutOutage(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 50, Window: time.Minute, Buckets: DefaultBuckets}
	a := newFallbackRig(t, srv, p, time.Second, DefaultFallbackOptions())
	b := newFallbackRig(t, srv, p, time.Second, DefaultFallbackOptions())
	key := redisTestKey(t, "k")
	name := a.redis.Key(key)
	ctx := context.Background()

	a.takeN(t, key, 5)
	b.takeN(t, key, 3)
	if sum := redistest.BucketSum(t, a.client, name); sum != 8 {
		t.Fatalf("Redis holds %d, want 8", sum)
	}
	// Nothing pending: reconciliation writes nothing.
	if !a.store.Reconcile(ctx) || !b.store.Reconcile(ctx) || redistest.BucketSum(t, a.client, name) != 8 {
		t.Fatal("reconciling with nothing lost changed the counts")
	}
	if err := a.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	a.takeN(t, key, 1)
	b.takeN(t, key, 1)
	if !a.store.Reconcile(ctx) || !b.store.Reconcile(ctx) {
		t.Fatal("reconcile failed")
	}
	if sum := redistest.BucketSum(t, a.client, name); sum != 10 {
		t.Fatalf("Redis holds %d after the loss and reconciliation, want 10", sum)
	}
	// Idempotent: a second reconciliation adds nothing.
	if !a.store.Reconcile(ctx) || !b.store.Reconcile(ctx) || redistest.BucketSum(t, a.client, name) != 10 {
		t.Fatal("second reconciliation changed the counts")
	}
	if res := a.take(t, key); res.Remaining != 50-11 {
		t.Fatalf("take after reconciliation: %+v, want Remaining 39", res)
	}

	// With Run running, the write-back follows the take that noticed the
	// loss without anyone asking: a admitted 7 so far, b 4.
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, s := range []*FallbackStore{a.store, b.store} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Run(runCtx)
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := a.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	a.takeN(t, key, 1)
	b.takeN(t, key, 1)
	poll.Until(t, 5*time.Second, "write-back by Run", func() bool { return redistest.BucketSum(t, a.client, name) == 7+4+2 })
	if errs, active := a.obs.snapshot(); len(errs) != 0 || len(active) != 0 {
		t.Fatalf("observer saw %v %v without an outage", errs, active)
	}
}

// TestFallbackLocalQuota: while Redis is away each replica admits its
// share of the limit, and no more than its share of the remaining Redis
// gave last, until that answer's counts have aged out.
func TestFallbackLocalQuota(t *testing.T) {
	cases := []struct {
		name      string
		limit     int
		share     float64
		before    int // admitted through Redis before the outage
		wantFirst int // admitted locally right after
		wantLater int // admitted locally once the last answer aged out
	}{
		{"half share, remaining caps", 10, 0.5, 6, 2, 5},
		{"whole share, remaining caps", 10, 1, 6, 4, 10},
		{"half share binds", 10, 0.5, 0, 5, 5},
		{"quarter share rounds down", 10, 0.25, 0, 2, 2},
		{"nothing remaining", 10, 0.5, 10, 0, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			leaktest.AtEnd(t)
			srv := redistest.Start(t)
			p := Policy{Limit: tc.limit, Window: time.Minute, Buckets: DefaultBuckets}
			clock := clockwork.NewFakeClockAt(time.Now())
			r := newFallbackRig(t, srv, p, 100*time.Millisecond,
				fallbackOptions(time.Hour, func(o *FallbackOptions) { o.Share, o.Clock, o.FailuresToOpen = tc.share, clock, 1 }))
			key := redisTestKey(t, "k")
			if n := r.takeN(t, key, tc.before); n != tc.before {
				t.Fatalf("%d of %d admitted through Redis", n, tc.before)
			}
			srv.Kill()
			if n := r.takeN(t, key, 3*tc.limit); n != tc.wantFirst {
				t.Fatalf("%d admitted locally, want %d", n, tc.wantFirst)
			}
			if !r.store.Degraded() {
				t.Fatal("not degraded")
			}
			res := r.take(t, key)
			if res.Allowed || res.Remaining != 0 || res.RetryAfter <= 0 || res.RetryAfter > p.Span()+p.BucketWidth() {
				t.Fatalf("local denial %+v", res)
			}
			clock.Advance(p.Span() + p.BucketWidth())
			if n := r.takeN(t, key, 3*tc.limit); n != tc.wantLater {
				t.Fatalf("%d admitted locally a window later, want %d", n, tc.wantLater)
			}
		})
	}
}

// TestFallbackBlockDuringOutage: a Block while Redis is away holds locally
// and reaches Redis with the write-back.
func TestFallbackBlockDuringOutage(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	clock := clockwork.NewFakeClockAt(time.Now())
	r := newFallbackRig(t, srv, p, 100*time.Millisecond, fallbackOptions(50*time.Millisecond, func(o *FallbackOptions) { o.Clock, o.FailuresToOpen = clock, 1 }))
	key := redisTestKey(t, "k")
	ctx := context.Background()
	r.take(t, key)
	srv.Kill()
	r.take(t, key) // opens the breaker
	if err := r.store.Block(ctx, key, 30*time.Second); err != nil {
		t.Fatalf("block while degraded: %v", err)
	}
	if res := r.take(t, key); res.Allowed || !res.Blocked {
		t.Fatalf("local take after block: %+v", res)
	}
	srv.Restart()
	poll.Until(t, 10*time.Second, "recovery", func() bool { return r.store.recover(ctx) })
	res := r.take(t, key)
	if res.Allowed || !res.Blocked || res.RetryAfter < 25*time.Second || res.RetryAfter > 31*time.Second {
		t.Fatalf("take through Redis after recovery: %+v, want blocked for about 30s", res)
	}
	if pttl := r.client.PTTL(ctx, r.redis.Key(key)).Val(); pttl < 25*time.Second {
		t.Fatalf("PTTL %s, want the block's length", pttl)
	}
}

// TestFallbackCallerGone: a caller whose context ends gets its error,
// nothing is counted locally and the breaker does not blame Redis.
func TestFallbackCallerGone(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	r := newFallbackRig(t, srv, p, time.Second, fallbackOptions(time.Second, func(o *FallbackOptions) { o.FailuresToOpen = 1 }))
	key := redisTestKey(t, "k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.store.Take(ctx, key, Take{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("take with a canceled context: %v", err)
	}
	if r.store.Degraded() {
		t.Fatal("a canceled caller opened the breaker")
	}
	if errs, _ := r.obs.snapshot(); len(errs) != 0 {
		t.Fatalf("store errors %v for a canceled caller", errs)
	}
	if res := r.take(t, key); !res.Allowed || res.Remaining != 9 {
		t.Fatalf("next take: %+v, want Remaining 9", res)
	}
}

// TestFallbackSweep drops idle keys from the shadow and the local store.
func TestFallbackSweep(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	clock := clockwork.NewFakeClockAt(time.Now())
	r := newFallbackRig(t, srv, p, time.Second, fallbackOptions(time.Second, func(o *FallbackOptions) { o.Clock = clock }))
	for i := range 5 {
		r.take(t, redisTestKey(t, strconv.Itoa(i)))
	}
	if n := r.store.Sweep(); n != 5 {
		t.Fatalf("%d keys tracked, want 5", n)
	}
	clock.Advance(p.Span() + 2*p.BucketWidth())
	if n := r.store.Sweep(); n != 0 {
		t.Fatalf("%d keys tracked after a window idle, want 0", n)
	}
}

// TestFallbackReleases: a reservation Redis made is given back to Redis; one
// made locally while Redis is away is given back locally and never written
// back, while what was admitted locally is.
func TestFallbackReleases(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 4, Window: time.Minute, Buckets: DefaultBuckets}
	clock := clockwork.NewFakeClockAt(time.Now())
	r := newFallbackRig(t, srv, p, 100*time.Millisecond, fallbackOptions(50*time.Millisecond, func(o *FallbackOptions) { o.Share, o.Clock = 0.5, clock }))
	ctx := context.Background()
	key, other := redisTestKey(t, "k"), redisTestKey(t, "other")
	pending := func(key string) (reserved int) {
		sh := r.store.shard(key)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		if k := sh.keys[key]; k != nil {
			for ck, n := range k.counts {
				if ck.reserved {
					reserved += n
				}
			}
		}
		return reserved
	}

	// Through Redis.
	if n := r.takeN(t, other, 4); n != 4 {
		t.Fatalf("%d of 4 admitted", n)
	}
	res, err := r.store.Take(ctx, other, Take{Wait: 2 * time.Minute})
	if err != nil || !res.Allowed || !res.Slot.reserved || res.Slot.local || pending(other) != 1 {
		t.Fatalf("reservation through Redis: %+v %v, shadow %d", res, err, pending(other))
	}
	if err := r.store.Release(ctx, other, res.Slot); err != nil {
		t.Fatal(err)
	}
	if sum := redistest.BucketSum(t, r.client, r.redis.Key(other)); sum != 4 || pending(other) != 0 {
		t.Fatalf("after the release Redis holds %d (want 4), the shadow %d reserved", sum, pending(other))
	}

	// Locally: a share of floor(0.5*4) = 2, then a reservation.
	srv.Kill()
	if n := r.takeN(t, key, 2); n != 2 {
		t.Fatalf("%d of 2 admitted locally", n)
	}
	res, err = r.store.Take(ctx, key, Take{Wait: 2 * time.Minute})
	if err != nil || !res.Allowed || !res.Slot.reserved || !res.Slot.local || pending(key) != 1 {
		t.Fatalf("local reservation: %+v %v, shadow %d", res, err, pending(key))
	}
	if err := r.store.Release(ctx, key, res.Slot); err != nil {
		t.Fatal(err)
	}
	if c := r.store.Local().Counted()[key]; len(c) != 1 || c[0].Count != 2 || c[0].Reserved {
		t.Fatalf("local store after the release: %+v, want the 2 takes", c)
	}
	srv.Restart()
	poll.Until(t, 10*time.Second, "recovery after restart", func() bool { return r.store.recover(ctx) })
	if sum := redistest.BucketSum(t, r.client, r.redis.Key(key)); sum != 2 {
		t.Fatalf("Redis holds %d after reconciliation, want the 2 local takes", sum)
	}
}

// TestFallbackWritesBackBeforeAdmitting: Redis loses its data (FLUSHALL
// and SCRIPT FLUSH) while two replicas hold counts of a key: each writes
// its counts back before its next admission, so the limit still holds
// (without it, the replica that comes second would admit on top of the
// first one's write-back only).
func TestFallbackWritesBackBeforeAdmitting(t *testing.T) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	a := newFallbackRig(t, srv, p, time.Second, DefaultFallbackOptions())
	b := newFallbackRig(t, srv, p, time.Second, DefaultFallbackOptions())
	ctx := context.Background()
	key := redisTestKey(t, "k")
	if n := a.takeN(t, key, 5); n != 5 {
		t.Fatalf("a: %d of 5", n)
	}
	if n := b.takeN(t, key, 4); n != 4 {
		t.Fatalf("b: %d of 4", n)
	}
	for _, cmd := range [][]any{{"flushall"}, {"script", "flush"}} {
		if err := a.client.Do(ctx, cmd...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// b writes back its 4, then takes the 5th slot of the new key.
	if res := b.take(t, key); !res.Allowed || res.Remaining != 10-4-1 {
		t.Fatalf("b after the flush: %+v, want admitted on its 4 written back (remaining 5)", res)
	}
	// a writes back its 5: the key is full, a refuses.
	if res := a.take(t, key); res.Allowed {
		t.Fatalf("a after the flush: %+v, want refused: 5 + 4 + 1 counted", res)
	}
	if sum := redistest.BucketSum(t, a.client, a.redis.Key(key)); sum != 10 {
		t.Fatalf("Redis holds %d, want 10", sum)
	}
	if a.store.LostKeys() != 1 || b.store.LostKeys() != 1 || a.store.Degraded() || b.store.Degraded() {
		t.Fatalf("lost keys a %d b %d, degraded a %v b %v", a.store.LostKeys(), b.store.LostKeys(), a.store.Degraded(), b.store.Degraded())
	}
}
