package limiter

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// The limiter's tests over a real Redis store: a client, a round-trip
// counter, per-test keys, and the slots the store's hash counts.

func newRedisTestClient(t testing.TB, srv *redistest.Server, timeout time.Duration) redis.UniversalClient {
	t.Helper()
	c, err := quota.NewRedisClient(quota.RedisClientOptions{URL: srv.URL(), Timeout: timeout})
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// commandCounter is a go-redis hook counting round trips: one per command
// and one per pipeline.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// epoch is where the fake clocks of these tests start.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// verifyNoRedisLeaks checks, when the test ends, that it left no goroutine
// behind but go-redis's own dial probes.
func verifyNoRedisLeaks(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, current,
			// go-redis probes a pool whose dials all failed from a goroutine
			// that notices Close within a second.
			goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
	})
}

// pollUntil polls cond every 10ms until it holds or timeout passes: a
// bounded wait on an observable condition, never a fixed sleep.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// redisTestKey returns a distinct key per test, shaped like the proxy's keys.
func redisTestKey(t testing.TB, suffix string) string {
	return fmt.Sprintf("%x", []byte(t.Name()+"/"+suffix))
}

// bucketSum adds up the bucket fields of a quota HASH (every field but
// the meta field "m").
func bucketSum(t *testing.T, c redis.UniversalClient, name string) int {
	t.Helper()
	all, err := c.HGetAll(context.Background(), name).Result()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for f, v := range all {
		if f == "m" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("field %s = %q", f, v)
		}
		sum += n
	}
	return sum
}
