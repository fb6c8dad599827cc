package quota

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/testutil/faultproxy"
	"github.com/fusioo-gateway/gateway/internal/testutil/leaktest"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// TestRedisTimeoutBlackholed: Redis behind a proxy that stops forwarding
// without closing the sockets, concurrent admissions through the fallback
// store: until the breaker opens, none takes longer than redis.timeout (and
// a little scheduling), with autopipelining as without; every one is
// answered, locally.
func TestRedisTimeoutBlackholed(t *testing.T) {
	for _, ap := range []bool{false, true} {
		t.Run(fmt.Sprintf("auto_pipeline=%v", ap), func(t *testing.T) { testRedisTimeoutBlackholed(t, ap) })
	}
}

// blackholeSlack is what a take may take beyond redis.timeout: the
// goroutine's wake-up and the local answer, on a loaded machine.
const blackholeSlack = 25 * time.Millisecond

func testRedisTimeoutBlackholed(t *testing.T, autoPipeline bool) {
	leaktest.AtEnd(t)
	srv := redistest.Start(t)
	proxy, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	const timeout = 50 * time.Millisecond
	client, err := NewRedisClient(RedisClientOptions{URL: "redis://" + proxy.Addr(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	p := Policy{Limit: 1_000_000, Window: time.Minute, Buckets: DefaultBuckets}
	store := NewFallbackStore(NewRedisStore(client, p, redisOptions(timeout, autoPipeline)), p,
		fallbackOptions(time.Minute, func(o *FallbackOptions) { o.Share = 1 }))
	ctx := context.Background()
	key := redisTestKey(t, "k")
	for range 20 { // connections made, the script loaded
		if res, err := store.Take(ctx, key, Take{}); err != nil || !res.Allowed || store.Degraded() {
			t.Fatalf("before the blackhole: %+v %v", res, err)
		}
	}

	proxy.Pause()
	var mu sync.Mutex
	var slowest time.Duration
	takes := 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for !store.Degraded() {
				start := time.Now()
				res, err := store.Take(ctx, key, Take{})
				took := time.Since(start)
				mu.Lock()
				slowest, takes = max(slowest, took), takes+1
				mu.Unlock()
				if err != nil || !res.Allowed {
					t.Errorf("take with Redis blackholed: %+v %v, want answered locally", res, err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d takes until the breaker opened, the slowest %s (redis.timeout %s)", takes, slowest, timeout)
	if slowest > timeout+blackholeSlack {
		t.Fatalf("a take took %s with Redis blackholed, want <= redis.timeout %s + %s", slowest, timeout, blackholeSlack)
	}
	proxy.Resume()
}
