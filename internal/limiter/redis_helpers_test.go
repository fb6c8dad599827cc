package limiter

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// epoch is where the fake clocks of these tests start.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// redisTestKey returns a distinct key per test, shaped like the proxy's keys.
func redisTestKey(t testing.TB, suffix string) string {
	return fmt.Sprintf("%x", []byte(t.Name()+"/"+suffix))
}
