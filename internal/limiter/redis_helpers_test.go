package limiter

import (
	"context"
	"fmt"
	"strconv"
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
