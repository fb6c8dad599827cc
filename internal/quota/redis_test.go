package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"

	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// newRedisTestClient returns a client to srv built like the gateway builds it,
// closed when the test ends.
func newRedisTestClient(t testing.TB, srv *redistest.Server, timeout time.Duration) redis.UniversalClient {
	t.Helper()
	c, err := NewRedisClient(RedisClientOptions{URL: srv.URL(), Timeout: timeout})
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisOptions is DefaultRedisOptions with calls bounded by timeout and,
// when autoPipeline is set, concurrent takes pipelined.
func redisOptions(timeout time.Duration, autoPipeline bool) RedisOptions {
	o := DefaultRedisOptions()
	o.Timeout, o.AutoPipeline = timeout, autoPipeline
	return o
}

// redisTestKey returns a distinct key per test, shaped like the proxy's keys.
func redisTestKey(t testing.TB, suffix string) string {
	return fmt.Sprintf("%x", []byte(t.Name()+"/"+suffix))
}

// scriptStep is one operation replayed on both stores.
type scriptStep struct {
	advance   time.Duration // on the shared fake clock, before the operation
	wait      time.Duration // Take.Wait
	notBefore time.Duration // Take.NotBefore
	peek      bool
	release   int           // > 0: give back the slot of the release-th allowed take before this one
	block     time.Duration // > 0: Block instead of Take
}

// TestRedisScriptMatchesMemory replays the same operations on MemoryStore
// and on the Lua script (fed the same fake time through the test hook) and
// requires the same answers, field by field: the two implementations of
// window.go's algorithm agree, reservations, smoothing turns and releases
// included.
func TestRedisScriptMatchesMemory(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisTestClient(t, srv, time.Second)

	repeat := func(n int, s scriptStep) []scriptStep {
		out := make([]scriptStep, n)
		for i := range out {
			out[i] = s
		}
		return out
	}
	cat := func(parts ...[]scriptStep) []scriptStep {
		var out []scriptStep
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	random := func(seed uint64, n int) []scriptStep {
		r := rand.New(rand.NewPCG(seed, seed))
		out := make([]scriptStep, n)
		for i := range out {
			out[i].advance = time.Duration(r.IntN(1500)) * time.Millisecond
			switch x := r.IntN(100); {
			case x < 40:
				out[i].wait = time.Duration(r.IntN(8000)) * time.Millisecond
			case x < 50:
				out[i].wait = time.Duration(r.IntN(8000)) * time.Millisecond
				out[i].notBefore = time.Duration(r.IntN(3000)) * time.Millisecond
			case x < 55:
				out[i].peek = true
			case x < 62:
				out[i].release = 1 + r.IntN(5)
			case x < 64:
				out[i].block = time.Duration(1+r.IntN(4000)) * time.Millisecond
			}
		}
		return out
	}

	cases := []struct {
		name   string
		policy Policy
		steps  []scriptStep
	}{
		{
			name:   "burst then refill",
			policy: Policy{Limit: 5, Window: 10 * time.Second, Buckets: 10},
			steps: cat(repeat(7, scriptStep{}), []scriptStep{{advance: 1100 * time.Millisecond}, {advance: 8900 * time.Millisecond},
				{advance: time.Millisecond}, {advance: 1099 * time.Millisecond}, {advance: time.Millisecond}}, repeat(6, scriptStep{})),
		},
		{
			name:   "steady spread",
			policy: Policy{Limit: 6, Window: 10 * time.Second, Buckets: 10},
			steps:  repeat(60, scriptStep{advance: 700 * time.Millisecond}),
		},
		{
			name:   "reservations queue up",
			policy: Policy{Limit: 4, Window: 8 * time.Second, Buckets: 8},
			steps: cat(repeat(2, scriptStep{}), []scriptStep{{advance: 2 * time.Second}}, repeat(3, scriptStep{}),
				repeat(6, scriptStep{wait: 20 * time.Second}), []scriptStep{{peek: true}, {wait: time.Second}, {advance: 5 * time.Second},
					{}, {wait: 4 * time.Second}, {release: 2}, {wait: 4 * time.Second}, {peek: true}}),
		},
		{
			name:   "smoothing turn",
			policy: Policy{Limit: 10, Window: 10 * time.Second, Buckets: DefaultBuckets},
			steps: cat([]scriptStep{{notBefore: 300 * time.Millisecond, wait: time.Second}, {notBefore: 2 * time.Second, wait: time.Second}},
				repeat(9, scriptStep{}), []scriptStep{{notBefore: time.Second, wait: 15 * time.Second}, {peek: true}}),
		},
		{
			name:   "margin",
			policy: Policy{Limit: 3, Window: 5 * time.Second, Margin: 1500 * time.Millisecond, Buckets: 5},
			steps:  cat(repeat(4, scriptStep{advance: 400 * time.Millisecond}), repeat(20, scriptStep{advance: 900 * time.Millisecond, wait: 3 * time.Second})),
		},
		{
			name:   "block",
			policy: Policy{Limit: 5, Window: 10 * time.Second, Buckets: 10},
			steps: []scriptStep{{}, {}, {block: 3 * time.Second}, {}, {wait: 5 * time.Second}, {peek: true}, {advance: time.Second, block: time.Second},
				{advance: 1999 * time.Millisecond}, {advance: time.Millisecond}, {}, {block: 20 * time.Second}, {advance: 15 * time.Second}, {advance: 5 * time.Second}},
		},
		{
			name:   "random",
			policy: Policy{Limit: 7, Window: 6 * time.Second, Margin: 500 * time.Millisecond, Buckets: 12},
			steps:  random(1, 600),
		},
		{
			name:   "random, default buckets",
			policy: Policy{Limit: 20, Window: 5 * time.Second, Buckets: DefaultBuckets},
			steps:  random(2, 600),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
			mem := NewMemoryStore(tc.policy, clock)
			rs := NewRedisStore(client, tc.policy, redisOptions(time.Second, false))
			rs.now = func() int64 { return clock.Now().UnixMilli() }
			ctx := context.Background()
			key := redisTestKey(t, "k")
			var memSlots, redisSlots []Reservation
			for i, s := range tc.steps {
				clock.Advance(s.advance)
				switch {
				case s.block > 0:
					if err := mem.Block(ctx, key, s.block); err != nil {
						t.Fatal(err)
					}
					if err := rs.Block(ctx, key, s.block); err != nil {
						t.Fatalf("step %d: redis block: %v", i, err)
					}
					continue
				case s.release > 0:
					if n := len(memSlots); n >= s.release {
						_ = mem.Release(ctx, key, memSlots[n-s.release])
						if err := rs.Release(ctx, key, redisSlots[n-s.release]); err != nil {
							t.Fatalf("step %d: redis release: %v", i, err)
						}
					}
					continue
				}
				take := Take{Wait: s.wait, NotBefore: s.notBefore, Peek: s.peek}
				want, _ := mem.Take(ctx, key, take)
				got, err := rs.Take(ctx, key, take)
				if err != nil {
					t.Fatalf("step %d: redis take: %v", i, err)
				}
				if !sameRedisResult(got, want) {
					t.Fatalf("step %d (%+v): redis %+v, memory %+v", i, s, got, want)
				}
				if want.Allowed {
					memSlots, redisSlots = append(memSlots, want.Slot), append(redisSlots, got.Slot)
				}
			}
		})
	}
}

// sameRedisResult compares results, allowing a millisecond of rounding.
func sameRedisResult(a, b Result) bool {
	near := func(x, y time.Duration) bool { return (x - y).Abs() <= time.Millisecond }
	return a.Allowed == b.Allowed && a.Limit == b.Limit && a.Remaining == b.Remaining &&
		a.Blocked == b.Blocked && near(a.RetryAfter, b.RetryAfter) && near(a.ResetAfter, b.ResetAfter) &&
		near(a.Delay, b.Delay) && near(a.Usable, b.Usable) && a.Slot.reserved == b.Slot.reserved
}

// TestRedisRetryAfterIsExact checks that a queued request can trust
// RetryAfter: one millisecond earlier the slot is still taken, at
// RetryAfter it is free, so one re-check at that time is enough.
func TestRedisRetryAfterIsExact(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisTestClient(t, srv, time.Second)
	p := Policy{Limit: 3, Window: 2 * time.Second, Margin: 250 * time.Millisecond, Buckets: DefaultBuckets}
	clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_123))
	rs := NewRedisStore(client, p, DefaultRedisOptions())
	rs.now = func() int64 { return clock.Now().UnixMilli() }
	ctx := context.Background()
	key := redisTestKey(t, "k")
	for i := range 3 {
		clock.Advance(100 * time.Millisecond)
		if r, err := rs.Take(ctx, key, Take{}); err != nil || !r.Allowed {
			t.Fatalf("take %d: %+v, %v", i, r, err)
		}
	}
	r, err := rs.Take(ctx, key, Take{})
	if err != nil || r.Allowed || r.RetryAfter <= 0 {
		t.Fatalf("over the limit: %+v, %v", r, err)
	}
	if r.RetryAfter > p.Span()+p.BucketWidth() || r.RetryAfter < p.Span()-300*time.Millisecond {
		t.Fatalf("RetryAfter %s outside (span-300ms, span+width]", r.RetryAfter)
	}
	clock.Advance(r.RetryAfter - time.Millisecond)
	if r2, _ := rs.Take(ctx, key, Take{}); r2.Allowed || r2.RetryAfter != time.Millisecond {
		t.Fatalf("1ms before RetryAfter: %+v, want denied with RetryAfter 1ms", r2)
	}
	clock.Advance(time.Millisecond)
	if r3, _ := rs.Take(ctx, key, Take{}); !r3.Allowed {
		t.Fatalf("at RetryAfter: %+v, want allowed", r3)
	}
}

// TestRedisBoundUnderConcurrency runs three gateway "replicas" (separate
// clients and stores) with demand at three times the limit, records the
// Redis time of every admission, and checks the rolling bound and the
// share of the quota used.
func TestRedisBoundUnderConcurrency(t *testing.T) {
	for _, ap := range []bool{false, true} {
		t.Run(fmt.Sprintf("auto_pipeline=%v", ap), func(t *testing.T) { testRedisBoundUnderConcurrency(t, ap) })
	}
}

func testRedisBoundUnderConcurrency(t *testing.T, autoPipeline bool) {
	srv := redistest.Start(t)
	const (
		replicas = 3
		workers  = 5 // per replica
		windows  = 4
	)
	p := Policy{Limit: 100, Window: time.Second, Buckets: DefaultBuckets}
	demand := 3 * float64(p.Limit) / p.Window.Seconds() // attempts per second, all workers
	period := time.Duration(float64(replicas*workers) / demand * float64(time.Second))
	key := redisTestKey(t, "k")

	var (
		mu       sync.Mutex
		admitted []int64 // Redis ms
		attempts atomic.Int64
		errs     atomic.Int64
	)
	ctx := context.Background()
	start := time.Now()
	end := start.Add(windows * p.Window)
	var wg sync.WaitGroup
	for r := range replicas {
		client := newRedisTestClient(t, srv, time.Second)
		store := NewRedisStore(client, p, redisOptions(time.Second, autoPipeline))
		if err := store.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Stagger the workers so the demand arrives evenly.
				phase := time.Duration(r*workers+w) * period / (replicas * workers)
				first := time.NewTimer(phase)
				<-first.C
				tick := time.NewTicker(period)
				defer tick.Stop()
				for time.Now().Before(end) {
					attempts.Add(1)
					var res Result
					var info Answer
					err := store.TakeKnowing(ctx, key, Take{}, Known{}, &res, &info)
					if err != nil {
						errs.Add(1)
					} else if res.Allowed {
						mu.Lock()
						admitted = append(admitted, info.Now)
						mu.Unlock()
					}
					<-tick.C
				}
			}()
		}
	}
	wg.Wait()
	if n := errs.Load(); n > 0 {
		t.Fatalf("%d takes failed", n)
	}
	sort.Slice(admitted, func(i, j int) bool { return admitted[i] < admitted[j] })
	win := p.Window.Milliseconds()
	worst := 0
	for i, j := 0, 0; i < len(admitted); i++ {
		for admitted[i]-admitted[j] >= win {
			j++
		}
		worst = max(worst, i-j+1)
	}
	t.Logf("%d attempts, %d admitted, most in one rolling window: %d (limit %d)", attempts.Load(), len(admitted), worst, p.Limit)
	if worst > p.Limit {
		t.Fatalf("a rolling window of %s held %d admissions, limit %d", p.Window, worst, p.Limit)
	}
	if len(admitted) == 0 {
		t.Fatal("nothing admitted")
	}
	// Demand saturates the quota from the first attempt on; skip the first
	// window (its burst) and count whole fixed windows after it.
	t0 := admitted[0]
	used := 0
	for _, a := range admitted {
		if k := (a - t0) / win; k >= 1 && k < windows-1 {
			used++
		}
	}
	full := (windows - 2) * p.Limit
	t.Logf("windows 2..%d used %d of %d (%.1f%%)", windows-1, used, full, 100*float64(used)/float64(full))
	if float64(used) < 0.95*float64(full) {
		t.Fatalf("saturated windows used %d of %d admissions (< 95%%)", used, full)
	}
}

// TestRedisKeyLayoutTTLAndMemory checks the key name, that fields stay
// bounded as buckets age out, that the TTL follows the newest bucket (or a
// block), the memory a token costs, and that an idle key expires.
func TestRedisKeyLayoutTTLAndMemory(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisTestClient(t, srv, time.Second)
	ctx := context.Background()

	t.Run("bounded fields and ttl", func(t *testing.T) {
		p := Policy{Limit: 10_000, Window: time.Minute, Buckets: DefaultBuckets}
		clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
		o := DefaultRedisOptions()
		o.KeyPrefix = "test"
		rs := NewRedisStore(client, p, o)
		rs.now = func() int64 { return clock.Now().UnixMilli() }
		key := redisTestKey(t, "k")
		name := rs.Key(key)
		if want := "test:{" + key + "}:q"; name != want {
			t.Fatalf("key name %q, want %q", name, want)
		}
		maxFields := int64(DefaultBuckets + 2)
		ttlMax := (p.Span() + p.BucketWidth()).Milliseconds()
		for i := range 3 * 60 * 4 { // three windows, four takes per bucket
			clock.Advance(250 * time.Millisecond)
			if r, err := rs.Take(ctx, key, Take{}); err != nil || !r.Allowed {
				t.Fatalf("take %d: %+v, %v", i, r, err)
			}
			if n := client.HLen(ctx, name).Val(); n > maxFields {
				t.Fatalf("take %d: %d fields, want <= %d", i, n, maxFields)
			}
			if pttl := client.PTTL(ctx, name).Val().Milliseconds(); pttl <= p.Span().Milliseconds()-1000 || pttl > ttlMax {
				t.Fatalf("take %d: PTTL %dms, want in (span-1s, %d]", i, pttl, ttlMax)
			}
		}
		mem, err := client.MemoryUsage(ctx, name).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("one token, %d fields: MEMORY USAGE %d bytes", client.HLen(ctx, name).Val(), mem)
		if mem > 4096 {
			t.Fatalf("MEMORY USAGE %d bytes for one token, want <= 4096", mem)
		}
		// A block longer than the window keeps the key as long as it lasts.
		if err := rs.Block(ctx, key, 10*time.Minute); err != nil {
			t.Fatal(err)
		}
		if pttl := client.PTTL(ctx, name).Val(); pttl < 10*time.Minute-time.Second || pttl > 10*time.Minute {
			t.Fatalf("PTTL after a 10m block: %s", pttl)
		}
		if n := client.HLen(ctx, name).Val(); n > maxFields {
			t.Fatalf("%d fields after block, want <= %d", n, maxFields)
		}
	})

	t.Run("denial creates nothing", func(t *testing.T) {
		rs := NewRedisStore(client, Policy{Limit: 5, Window: time.Minute, Buckets: DefaultBuckets}, DefaultRedisOptions())
		key := redisTestKey(t, "k")
		if r, err := rs.Take(ctx, key, Take{Peek: true}); err != nil || r.Allowed || r.Remaining != 5 {
			t.Fatalf("peek on a fresh key: %+v, %v", r, err)
		}
		if n := client.Exists(ctx, rs.Key(key)).Val(); n != 0 {
			t.Fatalf("a take that counted nothing created the key")
		}
	})

	t.Run("idle key expires", func(t *testing.T) {
		p := Policy{Limit: 5, Window: 300 * time.Millisecond, Buckets: 10}
		rs := NewRedisStore(client, p, DefaultRedisOptions())
		key := redisTestKey(t, "k")
		if r, err := rs.Take(ctx, key, Take{}); err != nil || !r.Allowed {
			t.Fatalf("take: %+v, %v", r, err)
		}
		name := rs.Key(key)
		if pttl := client.PTTL(ctx, name).Val(); pttl <= 0 || pttl > p.Span()+p.BucketWidth() {
			t.Fatalf("PTTL %s, want in (0, %s]", pttl, p.Span()+p.BucketWidth())
		}
		deadline := time.Now().Add(5 * time.Second)
		for client.Exists(ctx, name).Val() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("idle key still exists 5s after its window")
			}
			time.Sleep(20 * time.Millisecond) // polling the observable condition, bounded above
		}
	})
}

// TestRedisBlockAcrossInstances blocks through one replica and takes
// through another.
func TestRedisBlockAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	p := Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}
	a := NewRedisStore(newRedisTestClient(t, srv, time.Second), p, DefaultRedisOptions())
	b := NewRedisStore(newRedisTestClient(t, srv, time.Second), p, DefaultRedisOptions())

	t.Run("redis time", func(t *testing.T) {
		key := redisTestKey(t, "k")
		if r, err := b.Take(ctx, key, Take{}); err != nil || !r.Allowed {
			t.Fatalf("take before block: %+v, %v", r, err)
		}
		if err := a.Block(ctx, key, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := a.Block(ctx, key, time.Second); err != nil { // never shortens
			t.Fatal(err)
		}
		r, err := b.Take(ctx, key, Take{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed || !r.Blocked || r.Remaining != 0 || r.RetryAfter <= 1900*time.Millisecond || r.RetryAfter > 2*time.Second || r.ResetAfter != r.RetryAfter {
			t.Fatalf("blocked take: %+v, want denied, Blocked, RetryAfter ≈ 2s", r)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		clock := clockwork.NewFakeClockAt(time.UnixMilli(1_700_000_000_000))
		for _, s := range []*RedisStore{a, b} {
			s.now = func() int64 { return clock.Now().UnixMilli() }
		}
		t.Cleanup(func() { a.now, b.now = nil, nil })
		key := redisTestKey(t, "k")
		if err := a.Block(ctx, key, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2999 * time.Millisecond)
		if r, _ := b.Take(ctx, key, Take{}); r.Allowed || !r.Blocked || r.RetryAfter != time.Millisecond {
			t.Fatalf("1ms before the end: %+v", r)
		}
		clock.Advance(time.Millisecond)
		if r, _ := b.Take(ctx, key, Take{}); !r.Allowed || r.Blocked || r.Remaining != p.Limit-1 {
			t.Fatalf("at the end of the block: %+v", r)
		}
	})
}

// TestRedisRoundTripsAndScriptReload checks one round trip per take, and
// that a Redis that lost its script cache (restart, SCRIPT FLUSH) costs one
// extra round trip once (EVALSHA, NOSCRIPT, EVAL).
func TestRedisRoundTripsAndScriptReload(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisTestClient(t, srv, time.Second)
	cnt := &redistest.CommandCounter{}
	client.AddHook(cnt)
	ctx := context.Background()
	rs := NewRedisStore(client, Policy{Limit: 1000, Window: time.Minute, Buckets: DefaultBuckets}, DefaultRedisOptions())
	key := redisTestKey(t, "k")
	if err := rs.Ping(ctx); err != nil { // connection set up outside the count
		t.Fatal(err)
	}
	take := func() int64 {
		t.Helper()
		before := cnt.N.Load()
		if r, err := rs.Take(ctx, key, Take{}); err != nil || !r.Allowed {
			t.Fatalf("take: %+v, %v", r, err)
		}
		return cnt.N.Load() - before
	}
	take() // loads the script if this Redis has not seen it
	if n := take(); n != 1 {
		t.Fatalf("take with the script cached: %d round trips, want 1", n)
	}
	if err := client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n := take(); n != 2 {
		t.Fatalf("first take after SCRIPT FLUSH: %d round trips, want 2 (EVALSHA, EVAL)", n)
	}
	if n := take(); n != 1 {
		t.Fatalf("second take after SCRIPT FLUSH: %d round trips, want 1", n)
	}
}

// TestRedisTimeoutWhenPaused: a Redis that accepts but never answers
// (SIGSTOP) fails each call within the per-call timeout.
func TestRedisTimeoutWhenPaused(t *testing.T) {
	for _, ap := range []bool{false, true} {
		t.Run(fmt.Sprintf("auto_pipeline=%v", ap), func(t *testing.T) { testRedisTimeoutWhenPaused(t, ap) })
	}
}

func testRedisTimeoutWhenPaused(t *testing.T, autoPipeline bool) {
	srv := redistest.Start(t)
	const timeout = 50 * time.Millisecond
	client := newRedisTestClient(t, srv, timeout)
	rs := NewRedisStore(client, Policy{Limit: 10, Window: time.Minute, Buckets: DefaultBuckets}, redisOptions(timeout, autoPipeline))
	ctx := context.Background()
	key := redisTestKey(t, "k")
	if _, err := rs.Take(ctx, key, Take{}); err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	for i := range 5 {
		start := time.Now()
		_, err := rs.Take(ctx, key, Take{})
		if took := time.Since(start); took > 10*timeout {
			t.Fatalf("take %d took %s with Redis paused, want <= %s", i, took, 10*timeout)
		}
		if err == nil {
			t.Fatalf("take %d succeeded with Redis paused", i)
		}
	}
	start := time.Now()
	err := rs.Block(ctx, key, time.Second)
	if err == nil || time.Since(start) > 10*timeout {
		t.Fatalf("block with Redis paused: %v after %s", err, time.Since(start))
	}
	srv.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := rs.Take(ctx, key, Take{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis resumed but takes still fail: %v", err)
		}
	}
}

func TestNewRedisClient(t *testing.T) {
	timeout := DefaultRedisClientOptions().Timeout
	cases := []struct {
		name    string
		opts    RedisClientOptions
		wantErr string
		check   func(t *testing.T, c redis.UniversalClient)
	}{
		{
			name: "url with credentials and db",
			opts: RedisClientOptions{URL: "redis://alice:s3cret@redis.example:6380/2", Timeout: 40 * time.Millisecond, PoolSize: 7},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.Addr != "redis.example:6380" || o.Username != "alice" || o.Password != "s3cret" || o.DB != 2 || o.TLSConfig != nil {
					t.Fatalf("options %+v", o)
				}
				if o.ReadTimeout != 40*time.Millisecond || o.WriteTimeout != 40*time.Millisecond || !o.ContextTimeoutEnabled ||
					o.MaxRetries != 0 || o.DialerRetries != 1 || o.PoolSize != 7 {
					t.Fatalf("timeouts/retries: read %s write %s ctx %v retries %d dial retries %d pool %d",
						o.ReadTimeout, o.WriteTimeout, o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries, o.PoolSize)
				}
			},
		},
		{
			name: "RESP2 unless the URL asks",
			opts: RedisClientOptions{URL: "redis://redis.example:6380", Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				if p := c.(*redis.Client).Options().Protocol; p != 2 {
					t.Fatalf("protocol %d, want 2", p)
				}
				c3, err := NewRedisClient(RedisClientOptions{URL: "redis://redis.example:6380?protocol=3", Timeout: timeout})
				if err != nil {
					t.Fatal(err)
				}
				defer c3.Close()
				if p := c3.(*redis.Client).Options().Protocol; p != 3 {
					t.Fatalf("protocol=3 in the URL: %d", p)
				}
			},
		},
		{
			name: "rediss",
			opts: RedisClientOptions{URL: "rediss://redis.example:6380", Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.example" {
					t.Fatalf("TLS config %+v", o.TLSConfig)
				}
			},
		},
		{
			name: "tls flag and separate credentials",
			opts: RedisClientOptions{URL: "redis://redis.example:6379", TLS: true, Username: "u", Password: "p", DB: 3, Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.TLSConfig == nil || o.Username != "u" || o.Password != "p" || o.DB != 3 {
					t.Fatalf("options %+v", o)
				}
			},
		},
		{
			name: "unix socket",
			opts: RedisClientOptions{URL: "unix:///run/redis/redis.sock?db=4", Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.Network != "unix" || o.Addr != "/run/redis/redis.sock" || o.DB != 4 || !o.ContextTimeoutEnabled {
					t.Fatalf("options %+v", o)
				}
			},
		},
		{
			name: "sentinel",
			opts: RedisClientOptions{SentinelMaster: "mymaster", SentinelAddrs: []string{"10.0.0.1:26379", "10.0.0.2:26379"}, SentinelPassword: "x", Password: "p", Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				if _, ok := c.(*redis.Client); !ok {
					t.Fatalf("sentinel client is %T, want a failover *redis.Client", c)
				}
			},
		},
		{
			name: "cluster",
			opts: RedisClientOptions{ClusterAddrs: []string{"10.0.0.1:7000"}, Password: "p", TLS: true, Timeout: timeout},
			check: func(t *testing.T, c redis.UniversalClient) {
				cc, ok := c.(*redis.ClusterClient)
				if !ok {
					t.Fatalf("cluster client is %T", c)
				}
				if o := cc.Options(); len(o.Addrs) != 1 || o.Password != "p" || o.TLSConfig == nil || !o.ContextTimeoutEnabled {
					t.Fatalf("cluster options %+v", o)
				}
			},
		},
		{name: "nothing", opts: RedisClientOptions{Timeout: timeout}, wantErr: "set one of"},
		{name: "url and cluster", opts: RedisClientOptions{URL: "redis://h:1", ClusterAddrs: []string{"h:2"}, Timeout: timeout}, wantErr: "exclusive"},
		{name: "url and sentinel", opts: RedisClientOptions{URL: "redis://h:1", SentinelMaster: "m", SentinelAddrs: []string{"h:2"}, Timeout: timeout}, wantErr: "exclusive"},
		{name: "sentinel without addrs", opts: RedisClientOptions{SentinelMaster: "m", Timeout: timeout}, wantErr: "SentinelAddrs: required"},
		{name: "sentinel addrs without master", opts: RedisClientOptions{SentinelAddrs: []string{"h:1"}, Timeout: timeout}, wantErr: "SentinelMaster: required"},
		{name: "sentinel password alone", opts: RedisClientOptions{URL: "redis://h:1", SentinelPassword: "x", Timeout: timeout}, wantErr: "only applies"},
		{name: "cluster db", opts: RedisClientOptions{ClusterAddrs: []string{"h:1"}, DB: 1, Timeout: timeout}, wantErr: "database 0"},
		{name: "bad scheme", opts: RedisClientOptions{URL: "http://h:1", Timeout: timeout}, wantErr: "scheme"},
		{name: "bad db", opts: RedisClientOptions{URL: "redis://h:1/x", Timeout: timeout}, wantErr: "database"},
		{name: "credentials twice", opts: RedisClientOptions{URL: "redis://:a@h:1", Password: "b", Timeout: timeout}, wantErr: "both"},
		{name: "db twice", opts: RedisClientOptions{URL: "redis://h:1/2", DB: 3, Timeout: timeout}, wantErr: "database given twice"},
		{name: "bad address", opts: RedisClientOptions{ClusterAddrs: []string{"no-port"}, Timeout: timeout}, wantErr: "ClusterAddrs: "},
		{name: "sentinel password without master, credentials twice, bad db: all of them",
			opts: RedisClientOptions{URL: "redis://u:secret-pw@h:1/x", Password: "b", SentinelPassword: "s", Timeout: timeout}, wantErr: "SentinelPassword: only applies"},
		{name: "tls files without tls", opts: RedisClientOptions{URL: "redis://h:1", CAFile: "/x", Timeout: timeout}, wantErr: "need TLS = true"},
		{name: "cert without key", opts: RedisClientOptions{URL: "rediss://h:1", CertFile: "/x", Timeout: timeout}, wantErr: "go together"},
		{name: "missing ca file", opts: RedisClientOptions{URL: "rediss://h:1", CAFile: "/nonexistent/ca.pem", Timeout: timeout}, wantErr: "CAFile: "},
		{name: "negative timeout", opts: RedisClientOptions{URL: "redis://h:1", Timeout: -time.Second}, wantErr: "Timeout: "},
		{name: "no timeout (required)", opts: RedisClientOptions{URL: "redis://h:1"}, wantErr: "Timeout: must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewRedisClient(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if msg := err.Error(); strings.Contains(msg, "secret-pw") || strings.Contains(msg, "redis: redis:") {
					t.Fatalf("error %q echoes a password or doubles its prefix", msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc.check(t, c)
		})
	}
}

// TestNewRedisClientAuth talks to a password-protected server.
func TestNewRedisClientAuth(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "s3cret")
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(srv.Addr())
	for _, tc := range []struct {
		name string
		opts RedisClientOptions
		ok   bool
	}{
		{"password in url", RedisClientOptions{URL: "redis://:s3cret@" + srv.Addr() + "/0"}, true},
		{"password option", RedisClientOptions{URL: "redis://" + net.JoinHostPort(host, port), Password: "s3cret"}, true},
		{"wrong password", RedisClientOptions{URL: "redis://:nope@" + srv.Addr()}, false},
		{"no password", RedisClientOptions{URL: srv.URL()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Timeout = time.Second
			c, err := NewRedisClient(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rs := NewRedisStore(c, Policy{Limit: 1, Window: time.Second, Buckets: DefaultBuckets}, redisOptions(time.Second, false))
			_, err = rs.Take(ctx, redisTestKey(t, "k"), Take{})
			if tc.ok && err != nil {
				t.Fatalf("take: %v", err)
			}
			if !tc.ok && (err == nil || !errors.As(err, new(redis.Error))) {
				t.Fatalf("take without the right password: %v, want a Redis auth error", err)
			}
		})
	}
}
