package limiter

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"

	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// benchKeys are the keys the benchmarks spread their takes over, like the
// hashed tokens of many clients.
var benchKeys = func() []string {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "bench" + strconv.Itoa(i)
	}
	return keys
}()

// benchPolicy admits every take, so each take is one admission.
var benchPolicy = quota.Policy{Limit: 1 << 30, Window: time.Hour, Buckets: quota.DefaultBuckets}

// benchTake runs b.N takes on store (from one goroutine or, with parallel,
// from GOMAXPROCS goroutines) over all benchKeys, checks they were all
// admitted, and reports admissions per second and, when rt is set, Redis
// round trips per admission.
func benchTake(b *testing.B, store quota.Store, rt *redistest.CommandCounter, parallel bool) {
	benchAdmissions(b, len(benchKeys), rt, parallel, func(ctx context.Context, key string) (bool, error) {
		res, err := store.Take(ctx, key, quota.Take{})
		return res.Allowed, err
	})
}

// benchAdmissions runs b.N calls of admit over the first keys of benchKeys
// and reports as benchTake does.
func benchAdmissions(b *testing.B, keys int, rt *redistest.CommandCounter, parallel bool, admit func(context.Context, string) (bool, error)) {
	ctx := context.Background()
	var next, admitted atomic.Int64
	one := func() {
		ok, err := admit(ctx, benchKeys[int(next.Add(1))%keys])
		if err != nil {
			b.Error(err)
			return
		}
		if ok {
			admitted.Add(1)
		}
	}
	var trips0 int64
	if rt != nil {
		trips0 = rt.N.Load()
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				one()
			}
		})
	} else {
		for range b.N {
			one()
		}
	}
	b.StopTimer()
	n := admitted.Load()
	if n != int64(b.N) {
		b.Fatalf("%d of %d takes admitted", n, b.N)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "admissions/s")
	if rt != nil {
		b.ReportMetric(float64(rt.N.Load()-trips0)/float64(n), "roundtrips/admission")
	}
}

// redisBenchStore starts a redis-server and returns a store on it whose
// round trips are counted, with the script loaded and connections made.
func redisBenchStore(b *testing.B, maxHold ...time.Duration) (*quota.RedisStore, *redistest.CommandCounter) {
	b.Helper()
	srv := redistest.Start(b)
	client := newRedisTestClient(b, srv, time.Second)
	rt := &redistest.CommandCounter{}
	client.AddHook(rt)
	opts := quota.DefaultRedisOptions()
	opts.Timeout = time.Second
	if len(maxHold) > 0 {
		opts.MaxHold = maxHold[0]
	}
	s := quota.NewRedisStore(client, benchPolicy, opts)
	if _, err := s.Take(context.Background(), "warmup", quota.Take{}); err != nil {
		b.Fatal(err)
	}
	return s, rt
}

func BenchmarkTakeMemory(b *testing.B) {
	benchTake(b, quota.NewMemoryStore(benchPolicy, nil), nil, false)
}

func BenchmarkTakeMemoryParallel(b *testing.B) {
	benchTake(b, quota.NewMemoryStore(benchPolicy, nil), nil, true)
}

func BenchmarkTakeRedis(b *testing.B) {
	s, rt := redisBenchStore(b)
	benchTake(b, s, rt, false)
}

func BenchmarkTakeRedisParallel(b *testing.B) {
	s, rt := redisBenchStore(b)
	benchTake(b, s, rt, true)
}

// BenchmarkTakeFallbackParallel measures the Redis store behind the
// circuit breaker and the shadow accounting, as the gateway runs it.
func BenchmarkTakeFallbackParallel(b *testing.B) {
	s, rt := redisBenchStore(b)
	benchTake(b, quota.NewFallbackStore(s, benchPolicy, quota.DefaultFallbackOptions()), rt, true)
}

// BenchmarkRedisPing is the floor a take through Redis cannot beat: one
// PING round trip on the same client settings.
func BenchmarkRedisPing(b *testing.B) {
	s, _ := redisBenchStore(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if err := s.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// benchAdmit runs b.N admissions through a Limiter over the Redis store
// behind the fallback, as the gateway wires it, spread over 16 busy keys
// from GOMAXPROCS goroutines; lease 0 is one round trip per admission.
func benchAdmit(b *testing.B, lease time.Duration) {
	s, rt := redisBenchStore(b, 3*lease)
	cfg := DefaultConfig()
	cfg.Store = quota.NewFallbackStore(s, benchPolicy, quota.DefaultFallbackOptions())
	cfg.MaxDepth, cfg.MaxQueued, cfg.Lease, cfg.LeaseMax = 10, 100, lease, 32
	lim := New(cfg)
	b.Cleanup(lim.Close) // before the client closes: waits for refills in flight
	benchAdmissions(b, 16, rt, true, func(ctx context.Context, key string) (bool, error) {
		d, err := lim.Admit(ctx, key, time.Time{})
		return d.Allowed, err
	})
}

func BenchmarkAdmitRedisParallel(b *testing.B)      { benchAdmit(b, 0) }
func BenchmarkAdmitRedisLeaseParallel(b *testing.B) { benchAdmit(b, 100*time.Millisecond) }
